//! The `k` largest values of a vocabulary-sized row, in a fixed order: larger value first, ties by lower
//! id — so every list `explain` prints is deterministic.

/// One entry of a ranked list: the token, its value (a probability or a similarity) and its rank.
///
/// Ranks are competition ranks, `1 + the number of tokens with a strictly larger value`: tied tokens share
/// a rank, and a token's rank is the same whether it is read from a top list or asked for on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Ranked {
    pub id: u32,
    pub value: f64,
    pub rank: usize,
}

/// Up to this many entries a single pass keeping a sorted shortlist is cheapest (a row is read once and
/// the shortlist rarely changes after the first few hundred tokens); beyond it, a selection is.
const SHORTLIST_MAX: usize = 64;

/// The `k` largest `values` (all of them when `k` exceeds the row), `skip` left out, largest first, ties
/// by lower id, with competition ranks among the listed and the larger unlisted values.
pub(super) fn top_k(values: &[f64], k: usize, skip: Option<u32>) -> Vec<Ranked> {
    let picked = if k <= SHORTLIST_MAX { shortlist(values, k, skip) } else { select(values, k, skip) };
    let mut ranked: Vec<Ranked> = Vec::with_capacity(picked.len());
    for (i, (id, value)) in picked.into_iter().enumerate() {
        // Everything strictly larger is listed before this entry (the order is total), so the rank is one
        // past the first listed entry it ties with.
        let rank = match ranked.last() {
            Some(previous) if previous.value == value => previous.rank,
            _ => i + 1,
        };
        ranked.push(Ranked { id, value, rank });
    }
    ranked
}

/// Competition rank of `id` in `values`: `1 + the number of strictly larger values`.
pub(super) fn rank_of<T: PartialOrd + Copy>(values: &[T], id: u32) -> usize {
    let value = values[id as usize];
    1 + values.iter().filter(|&&other| other > value).count()
}

/// One pass keeping the best `k` seen so far, sorted. Ids arrive in increasing order, so a value equal to
/// the shortlist's last never displaces it: ties keep the lower id.
fn shortlist(values: &[f64], k: usize, skip: Option<u32>) -> Vec<(u32, f64)> {
    let mut best: Vec<(u32, f64)> = Vec::with_capacity(k + 1);
    for (id, &value) in (0u32..).zip(values) {
        if Some(id) == skip || value.is_nan() {
            continue;
        }
        if best.len() == k && best.last().is_none_or(|&(_, worst)| value <= worst) {
            continue;
        }
        let at = best.partition_point(|&(_, listed)| listed >= value);
        best.insert(at, (id, value));
        best.truncate(k);
    }
    best
}

/// Selection then a sort of the selected: linear in the row whatever `k`.
fn select(values: &[f64], k: usize, skip: Option<u32>) -> Vec<(u32, f64)> {
    let mut order: Vec<u32> =
        (0u32..).zip(values).filter(|&(id, value)| Some(id) != skip && !value.is_nan()).map(|(id, _)| id).collect();
    let by_value_then_id = |a: &u32, b: &u32| values[*b as usize].total_cmp(&values[*a as usize]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by_value_then_id);
        order.truncate(k);
    }
    order.sort_unstable_by(by_value_then_id);
    order.into_iter().map(|id| (id, values[id as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lushan_kernels::rng::Rng;

    #[test]
    fn largest_first_ties_by_lower_id_with_shared_ranks() {
        let values = [0.1, 0.4, 0.2, 0.4, 0.3, 0.4];
        let top = top_k(&values, 4, None);
        let listed: Vec<_> = top.iter().map(|r| (r.id, r.rank)).collect();
        assert_eq!(listed, [(1, 1), (3, 1), (5, 1), (4, 4)]);
        assert_eq!(rank_of(&values, 4), 4);
        assert_eq!(rank_of(&values, 0), 6);
        let skipped: Vec<_> = top_k(&values, 2, Some(1)).iter().map(|r| r.id).collect();
        assert_eq!(skipped, [3, 5]);
        assert_eq!(top_k(&values, 100, None).len(), 6);
    }

    #[test]
    fn shortlist_and_selection_agree() {
        let mut rng = Rng::new(11);
        // Few distinct values, so ties are everywhere.
        let values: Vec<f64> = (0..5000).map(|_| (rng.below(40) as f64) / 40.0).collect();
        for k in [1, 5, 64, 65, 300, 5000, 6000] {
            for skip in [None, Some(17)] {
                let a = shortlist(&values, k, skip);
                let b = select(&values, k, skip);
                assert_eq!(a, b, "k={k} skip={skip:?}");
                assert_eq!(top_k(&values, k, skip).len(), k.min(5000 - usize::from(skip.is_some())));
            }
        }
    }
}
