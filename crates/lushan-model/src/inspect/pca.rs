//! The first two principal components of a small set of points (token embeddings), without a linear
//! algebra dependency.
//!
//! The centred points `X` (n × d) have the same non-zero spectrum on both sides: `X·Xᵀ` (n × n, the Gram
//! matrix) and `Xᵀ·X` (d × d, the scatter matrix); the smaller one is decomposed. Its leading eigenpairs come
//! from subspace iteration with a Rayleigh–Ritz step (a block of [`BLOCK`] vectors, so two nearly equal
//! leading eigenvalues do not stall it, and a small symmetric eigenproblem solved by Jacobi rotations).
//! Everything starts from a fixed seed and signs are normalised: the same points give the same picture.

use lushan_kernels::rng::Rng;

/// Vectors iterated together: convergence of the top two goes as `(λ₁₇ / λ₂)^iterations`.
const BLOCK: usize = 16;
/// Ritz pairs are accepted when `‖A·x − θ·x‖ ≤ RESIDUAL_TOL · θ_max`.
const RESIDUAL_TOL: f64 = 1e-10;
/// A bound for spectra so flat that the top two directions are barely defined; the Ritz pairs reached by
/// then are still exact Rayleigh quotients, so coordinates and explained variance stay consistent.
const MAX_ITERATIONS: usize = 1000;
/// Seed of the starting block (any fixed value: it only has to be the same every run).
const START_SEED: u64 = 0x5ca1_ab1e;

/// Points projected on their first two principal components.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Projection {
    /// `[x, y]` per point, in input order.
    pub coords: Vec<[f64; 2]>,
    /// Fraction of the total variance along each component, largest first.
    pub explained_variance: [f64; 2],
}

/// Projects `points` (each of the same dimension) on their first two principal components. Each
/// component's sign puts its largest-magnitude coordinate on the positive side. Fewer than three distinct
/// points, or a zero spread, give zero coordinates where a component does not exist.
pub(super) fn project_2d(points: &[Vec<f64>]) -> Projection {
    let n = points.len();
    let dim = points.first().map_or(0, Vec::len);
    let centered = center(points, dim);
    let total_variance: f64 = centered.iter().map(|x| x * x).sum();
    if n == 0 || dim == 0 || total_variance.is_nan() || total_variance <= 0.0 {
        return Projection { coords: vec![[0.0; 2]; n], explained_variance: [0.0; 2] };
    }
    let components = if n <= dim { via_gram(&centered, n, dim) } else { via_scatter(&centered, n, dim) };
    let mut coords = vec![[0.0; 2]; n];
    let mut explained_variance = [0.0; 2];
    for (axis, (variance, mut values)) in components.into_iter().take(2).enumerate() {
        normalise_sign(&mut values);
        for (point, value) in coords.iter_mut().zip(values) {
            point[axis] = value;
        }
        explained_variance[axis] = variance.max(0.0) / total_variance;
    }
    Projection { coords, explained_variance }
}

/// The points minus their mean, row-major (n × dim).
fn center(points: &[Vec<f64>], dim: usize) -> Vec<f64> {
    let mut mean = vec![0.0; dim];
    for point in points {
        mean.iter_mut().zip(point).for_each(|(m, x)| *m += x);
    }
    // Divided, not multiplied by 1/n: identical points then centre to exactly zero.
    let n = points.len().max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    points.iter().flat_map(|point| point.iter().zip(&mean).map(|(x, m)| x - m)).collect()
}

/// Leading components from the Gram matrix `G = X·Xᵀ`: with `G·u = λ·u`, `|u| = 1`, the points'
/// coordinates along the matching principal direction are `√λ · u`.
fn via_gram(x: &[f64], n: usize, dim: usize) -> Vec<(f64, Vec<f64>)> {
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    let mut gram = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let g = dot(row(i), row(j));
            gram[i * n + j] = g;
            gram[j * n + i] = g;
        }
    }
    top_eigenpairs(&gram, n, 2)
        .into_iter()
        .map(|(lambda, u)| (lambda, u.iter().map(|ui| lambda.max(0.0).sqrt() * ui).collect()))
        .collect()
}

/// Leading components from the scatter matrix `S = Xᵀ·X`: coordinates are `x_i · v` for each unit
/// eigenvector `v`.
fn via_scatter(x: &[f64], n: usize, dim: usize) -> Vec<(f64, Vec<f64>)> {
    let mut scatter = vec![0.0; dim * dim];
    for point in x.chunks_exact(dim) {
        for (a, &xa) in point.iter().enumerate() {
            for (b, &xb) in point.iter().enumerate().take(a + 1) {
                scatter[a * dim + b] += xa * xb;
            }
        }
    }
    for a in 0..dim {
        for b in 0..a {
            scatter[b * dim + a] = scatter[a * dim + b];
        }
    }
    top_eigenpairs(&scatter, dim, 2)
        .into_iter()
        .map(|(lambda, v)| (lambda, (0..n).map(|i| dot(&x[i * dim..(i + 1) * dim], &v)).collect()))
        .collect()
}

/// Flips `values` so that its largest-magnitude entry (the first, on ties) is positive.
fn normalise_sign(values: &mut [f64]) {
    let mut largest = 0;
    for (i, v) in values.iter().enumerate() {
        if v.abs() > values[largest].abs() {
            largest = i;
        }
    }
    if values.get(largest).is_some_and(|&v| v < 0.0) {
        values.iter_mut().for_each(|v| *v = -*v);
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The `count` largest eigenvalues of the symmetric positive semi-definite `m × m` `matrix` (row-major),
/// largest first, each with a unit eigenvector.
fn top_eigenpairs(matrix: &[f64], m: usize, count: usize) -> Vec<(f64, Vec<f64>)> {
    let block = m.min(BLOCK);
    let mut rng = Rng::new(START_SEED);
    let mut basis: Vec<Vec<f64>> = (0..block).map(|_| (0..m).map(|_| rng.next_normal()).collect()).collect();
    orthonormalise(&mut basis);
    let times_matrix = |v: &[f64]| -> Vec<f64> { matrix.chunks_exact(m).map(|row| dot(row, v)).collect() };
    let mut iteration = 0;
    loop {
        iteration += 1;
        let images: Vec<Vec<f64>> = basis.iter().map(|v| times_matrix(v)).collect();
        // Rayleigh–Ritz: the matrix restricted to the block, `H = Qᵀ·A·Q` (symmetrised against rounding).
        let mut restricted = vec![0.0; block * block];
        for i in 0..block {
            for j in 0..=i {
                let h = 0.5 * (dot(&basis[i], &images[j]) + dot(&basis[j], &images[i]));
                restricted[i * block + j] = h;
                restricted[j * block + i] = h;
            }
        }
        let (thetas, rotation) = symmetric_eigen(restricted, block);
        let combine = |vectors: &[Vec<f64>], k: usize| -> Vec<f64> {
            let mut out = vec![0.0; m];
            for (j, v) in vectors.iter().enumerate() {
                let w = rotation[j * block + k];
                out.iter_mut().zip(v).for_each(|(o, x)| *o += w * x);
            }
            out
        };
        let ritz: Vec<Vec<f64>> = (0..block).map(|k| combine(&basis, k)).collect();
        let ritz_images: Vec<Vec<f64>> = (0..block).map(|k| combine(&images, k)).collect();
        let wanted = count.min(block);
        let scale = thetas.first().copied().unwrap_or(0.0).abs();
        let converged = (0..wanted).all(|k| {
            let residual: f64 =
                ritz_images[k].iter().zip(&ritz[k]).map(|(ax, x)| (ax - thetas[k] * x).powi(2)).sum::<f64>().sqrt();
            residual <= RESIDUAL_TOL * scale
        });
        if converged || iteration >= MAX_ITERATIONS {
            return thetas.into_iter().zip(ritz).take(wanted).collect();
        }
        basis = ritz_images;
        orthonormalise(&mut basis);
    }
}

/// Modified Gram–Schmidt, applied twice ("twice is enough" for orthogonality to rounding). A vector that
/// lies in the span of the earlier ones (the matrix has lower rank than the block) becomes zero.
fn orthonormalise(vectors: &mut [Vec<f64>]) {
    for _ in 0..2 {
        for i in 0..vectors.len() {
            let (earlier, rest) = vectors.split_at_mut(i);
            let v = &mut rest[0];
            let before = dot(v, v).sqrt();
            for u in earlier.iter() {
                let projection = dot(u, v);
                v.iter_mut().zip(u).for_each(|(x, y)| *x -= projection * y);
            }
            let norm = dot(v, v).sqrt();
            if norm == 0.0 || norm <= 1e-12 * before {
                v.iter_mut().for_each(|x| *x = 0.0);
            } else {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
}

/// Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations: eigenvalues largest first
/// (stable on ties) and the eigenvectors as columns of an `n × n` row-major matrix.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut vectors = vec![0.0; n * n];
    (0..n).for_each(|i| vectors[i * n + i] = 1.0);
    let norm2: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..64 {
        let off_diagonal: f64 =
            (0..n).flat_map(|p| (p + 1..n).map(move |q| (p, q))).map(|(p, q)| a[p * n + q].powi(2)).sum();
        if off_diagonal <= 1e-30 * norm2 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Numerical Recipes' stable form, |angle| ≤ π/4).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (vectors[k * n + p], vectors[k * n + q]);
                    vectors[k * n + p] = c * vkp - s * vkq;
                    vectors[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut sorted = vec![0.0; n * n];
    for (k, &i) in order.iter().enumerate() {
        for row in 0..n {
            sorted[row * n + k] = vectors[row * n + i];
        }
    }
    (values, sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn a_known_planar_set_projects_on_its_axes() {
        // A cross rotated by 30°: variance 14 along its long arm, 6 across, nothing else.
        let (cos, sin) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let arms = [[3.0, 0.0], [-1.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -1.0], [0.0, -1.0]];
        let points: Vec<Vec<f64>> =
            arms.iter().map(|&[s, t]| vec![1.0 + s * cos - t * sin, -2.0 + s * sin + t * cos]).collect();
        let projection = project_2d(&points);
        let [first, second] = projection.explained_variance;
        assert!(close(first, 0.7, 1e-12) && close(second, 0.3, 1e-12), "{:?}", projection.explained_variance);
        for (got, want) in projection.coords.iter().zip(arms) {
            assert!(close(got[0], want[0], 1e-12) && close(got[1], want[1], 1e-12), "{:?}", projection.coords);
        }
    }

    #[test]
    fn degenerate_sets_give_zero_spread() {
        assert_eq!(project_2d(&[]).coords.len(), 0);
        let same = vec![vec![1.0, 2.0, 3.0]; 3];
        assert_eq!(project_2d(&same), Projection { coords: vec![[0.0; 2]; 3], explained_variance: [0.0; 2] });
        // Two points: one component carries everything.
        let two = project_2d(&[vec![0.0, 0.0, 0.0], vec![3.0, 4.0, 0.0]]);
        assert!(close(two.explained_variance[0], 1.0, 1e-12) && close(two.explained_variance[1], 0.0, 1e-12));
        assert!(close(two.coords[0][0].abs(), 2.5, 1e-12) && close(two.coords[0][0], -two.coords[1][0], 1e-12));
    }

    fn random_points(n: usize, dim: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = Rng::new(seed);
        // Decaying scales per dimension, so the components are well separated but many are non-trivial.
        (0..n).map(|_| (0..dim).map(|d| rng.next_normal() * 3.0 / (1.0 + d as f64)).collect()).collect()
    }

    #[test]
    fn gram_and_scatter_sides_agree_and_subspace_iteration_matches_full_jacobi() {
        for (n, dim) in [(30, 40), (60, 40), (25, 25)] {
            let points = random_points(n, dim, n as u64);
            let x = center(&points, dim);
            let gram = via_gram(&x, n, dim);
            let scatter = via_scatter(&x, n, dim);
            for ((lg, mut cg), (ls, mut cs)) in gram.into_iter().zip(scatter) {
                assert!(close(lg, ls, 1e-9 * lg), "{n}×{dim}: {lg} vs {ls}");
                normalise_sign(&mut cg);
                normalise_sign(&mut cs);
                assert!(cg.iter().zip(&cs).all(|(a, b)| close(*a, *b, 1e-7)), "{n}×{dim}");
            }
            // The scatter matrix is larger than one block: its top pairs against a full decomposition.
            let mut scatter = vec![0.0; dim * dim];
            for row in x.chunks_exact(dim) {
                for a in 0..dim {
                    for b in 0..dim {
                        scatter[a * dim + b] += row[a] * row[b];
                    }
                }
            }
            let (all_values, _) = symmetric_eigen(scatter.clone(), dim);
            let top = top_eigenpairs(&scatter, dim, 2);
            for (k, (value, vector)) in top.iter().enumerate() {
                assert!(close(*value, all_values[k], 1e-9 * all_values[0]), "{value} vs {}", all_values[k]);
                assert!(close(dot(vector, vector), 1.0, 1e-12));
            }
            let projection = project_2d(&points);
            let total: f64 = x.iter().map(|v| v * v).sum();
            for axis in 0..2 {
                let spread: f64 = projection.coords.iter().map(|c| c[axis] * c[axis]).sum();
                assert!(close(spread / total, projection.explained_variance[axis], 1e-9));
            }
            assert!(projection.explained_variance[0] >= projection.explained_variance[1]);
        }
    }

    #[test]
    fn jacobi_diagonalises() {
        let a = vec![4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 1.0];
        let (values, vectors) = symmetric_eigen(a.clone(), 3);
        assert!(values.windows(2).all(|w| w[0] >= w[1]));
        for k in 0..3 {
            let v: Vec<f64> = (0..3).map(|i| vectors[i * 3 + k]).collect();
            let av: Vec<f64> = a.chunks_exact(3).map(|row| dot(row, &v)).collect();
            assert!(av.iter().zip(&v).all(|(x, y)| close(*x, values[k] * y, 1e-12)), "{k}");
        }
        assert!(close(values.iter().sum::<f64>(), 8.0, 1e-12));
    }
}
