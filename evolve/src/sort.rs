//! Non-dominated sorting and crowding distance (all objectives minimised).
//!
//! * Two objectives: after a lexicographic sort, a point is dominated by some member of a
//!   front iff it is dominated by the front's *last* member, so the front of each point is
//!   found by binary search: O(N log N) (Jensen 2003).
//! * M ≥ 3 objectives: ENS-BS, efficient non-dominated sort with binary search over fronts
//!   (Zhang, Tian, Cheng & Jin 2015, <https://doi.org/10.1109/TEVC.2014.2308305>): a point
//!   can only be dominated by points before it in lexicographic order, so fronts are built in
//!   that order and each point's front found by binary search, comparing it against a front's
//!   members only.
//!
//! Ties are broken by index, so the result is a deterministic function of the input.

/// Whether `a` Pareto-dominates `b`: no worse in every objective, better in one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        if x < y {
            better = true;
        }
    }
    better
}

/// Sorts `points` (each a slice of objective values) into fronts of indices; front 0 is the
/// non-dominated set. Within a front, indices are in lexicographic order of their points.
/// NaN must have been removed by the caller (see `Evaluation::sanitized`).
pub fn non_dominated_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    if points.is_empty() {
        return Vec::new();
    }
    let m = points[0].len();
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| lexicographic(&points[a], &points[b]).then(a.cmp(&b)));
    let mut fronts: Vec<Vec<usize>> = Vec::new();
    for &p in &order {
        // The first front none of whose members dominates p. Domination is monotone over
        // fronts (if front k dominates p, so does every front before k), so binary search.
        let dominated_by = |front: &Vec<usize>| -> bool {
            if m == 2 {
                front
                    .last()
                    .is_some_and(|&q| dominates(&points[q], &points[p]))
            } else {
                front
                    .iter()
                    .rev()
                    .any(|&q| dominates(&points[q], &points[p]))
            }
        };
        let (mut lo, mut hi) = (0, fronts.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if dominated_by(&fronts[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == fronts.len() {
            fronts.push(vec![p]);
        } else {
            fronts[lo].push(p);
        }
    }
    fronts
}

/// The O(M N²) textbook sort (Deb et al. 2002), kept as the reference the fast sort is tested
/// against. Fronts are returned with indices in increasing order.
pub fn naive_non_dominated_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    let n = points.len();
    let mut dominated_count = vec![0usize; n];
    let mut dominates_list: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in 0..n {
            if dominates(&points[i], &points[j]) {
                dominates_list[i].push(j);
            } else if dominates(&points[j], &points[i]) {
                dominated_count[i] += 1;
            }
        }
    }
    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_count[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominates_list[i] {
                dominated_count[j] -= 1;
                if dominated_count[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(current);
        current = next;
    }
    fronts
}

/// Crowding distance of each member of `front` (Deb et al. 2002): the sum over objectives of
/// the normalised gap between its neighbours; boundary points get infinity. Members whose
/// objective vector repeats an earlier member's get 0 (as pymoo does), so copies never look
/// isolated and crowd out distinct points.
pub fn crowding_distance(points: &[Vec<f64>], front: &[usize]) -> Vec<f64> {
    let mut first_of: Vec<usize> = Vec::with_capacity(front.len());
    let mut unique: Vec<usize> = Vec::new();
    let mut order: Vec<usize> = (0..front.len()).collect();
    order.sort_by(|&a, &b| lexicographic(&points[front[a]], &points[front[b]]).then(a.cmp(&b)));
    let mut is_copy = vec![false; front.len()];
    for w in 1..order.len() {
        if points[front[order[w]]] == points[front[order[w - 1]]] {
            is_copy[order[w]] = true;
        }
    }
    for (k, &idx) in front.iter().enumerate() {
        if !is_copy[k] {
            first_of.push(k);
            unique.push(idx);
        }
    }
    let unique_distance = distinct_crowding_distance(points, &unique);
    let mut distance = vec![0.0f64; front.len()];
    for (k, d) in first_of.into_iter().zip(unique_distance) {
        distance[k] = d;
    }
    distance
}

fn lexicographic(a: &[f64], b: &[f64]) -> core::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(core::cmp::Ordering::Equal)
}

fn distinct_crowding_distance(points: &[Vec<f64>], front: &[usize]) -> Vec<f64> {
    let n = front.len();
    let mut distance = vec![0.0f64; n];
    if n <= 2 {
        return vec![f64::INFINITY; n];
    }
    let m = points[front[0]].len();
    let mut order: Vec<usize> = (0..n).collect();
    // `obj` indexes the objective vectors of several different points.
    #[allow(clippy::needless_range_loop)]
    for obj in 0..m {
        order.sort_by(|&a, &b| {
            points[front[a]][obj]
                .total_cmp(&points[front[b]][obj])
                .then(a.cmp(&b))
        });
        let lo = points[front[order[0]]][obj];
        let hi = points[front[order[n - 1]]][obj];
        distance[order[0]] = f64::INFINITY;
        distance[order[n - 1]] = f64::INFINITY;
        let span = hi - lo;
        if !(span > 0.0 && span.is_finite()) {
            continue;
        }
        for k in 1..n - 1 {
            let gap = points[front[order[k + 1]]][obj] - points[front[order[k - 1]]][obj];
            distance[order[k]] += gap / span;
        }
    }
    distance
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted_fronts(mut f: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
        for x in &mut f {
            x.sort_unstable();
        }
        f
    }

    #[test]
    fn small_example() {
        let p = vec![
            vec![1.0, 5.0],
            vec![2.0, 3.0],
            vec![3.0, 1.0],
            vec![2.0, 4.0],
            vec![4.0, 4.0],
            vec![2.0, 3.0],
        ];
        let f = sorted_fronts(non_dominated_sort(&p));
        assert_eq!(f, vec![vec![0, 1, 2, 5], vec![3], vec![4]]);
        assert_eq!(f, naive_non_dominated_sort(&p));
    }

    #[test]
    fn duplicates_get_no_crowding_credit() {
        let p = vec![
            vec![0.0, 3.0],
            vec![1.0, 2.0],
            vec![1.0, 2.0],
            vec![3.0, 0.0],
        ];
        let d = crowding_distance(&p, &[0, 1, 2, 3]);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        assert!(d[1] > 0.0 && d[2] == 0.0, "{d:?}");
    }

    #[test]
    fn crowding_boundaries_are_infinite() {
        let p = vec![
            vec![0.0, 3.0],
            vec![1.0, 2.0],
            vec![2.0, 1.0],
            vec![3.0, 0.0],
        ];
        let d = crowding_distance(&p, &[0, 1, 2, 3]);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        assert!((d[1] - (2.0 / 3.0 + 2.0 / 3.0)).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn fast_sort_equals_naive(
            m in 2usize..5,
            raw in proptest::collection::vec(proptest::collection::vec(0u8..6, 4), 0..80),
        ) {
            // Small integer grids make many ties and duplicates.
            let points: Vec<Vec<f64>> =
                raw.iter().map(|p| p[..m].iter().map(|&x| f64::from(x)).collect()).collect();
            prop_assert_eq!(sorted_fronts(non_dominated_sort(&points)), naive_non_dominated_sort(&points));
        }
    }
}
