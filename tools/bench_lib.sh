# Sourced by the side-by-side benchmark scripts (run from the repository root): `py`, the Python with torch +
# transformers (PYTHON, else ./venv, else /work/venv: see README.md here), `median` of the numbers on stdin,
# and `bin`, the release binary, built.
py=${PYTHON:-venv/bin/python}
[ -x "$py" ] || py=/work/venv/bin/python
[ -x "$py" ] || { echo "no Python with torch + transformers at $py: set PYTHON (see tools/README.md)" >&2; exit 1; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
cargo build --release -q
bin=target/release/lushan
