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

/// Prunes `front` to `keep` members by M-nearest-neighbour crowding (Kukkonen & Deb 2006,
/// "A fast and effective method for pruning of non-dominated solutions in many-objective
/// problems", PPSN IX, <https://doi.org/10.1007/11844297_56>): objectives are normalised by the
/// front's range, each member's crowding is the product of its distances to its `M` nearest
/// neighbours (`M` = number of objectives), the extreme members of every objective are never
/// removed, and the most crowded member is removed one at a time with its former neighbours'
/// crowding recomputed. Unlike the per-axis crowding distance, this sees crowding in every
/// direction, which matters from three objectives on. Ties go against the later index, so the
/// result depends only on the input order. Returns the kept members in their original order.
pub fn prune_nearest_neighbours(points: &[Vec<f64>], front: &[usize], keep: usize) -> Vec<usize> {
    let n = front.len();
    if n <= keep {
        return front.to_vec();
    }
    let m = points[front[0]].len();
    let k = m.min(n - 1).max(1);
    let mut lo = vec![f64::INFINITY; m];
    let mut hi = vec![f64::NEG_INFINITY; m];
    for &i in front {
        for (o, &v) in points[i].iter().enumerate() {
            lo[o] = lo[o].min(v);
            hi[o] = hi[o].max(v);
        }
    }
    let mut protected = vec![false; n];
    // `o` indexes the objective vectors of several different points.
    #[allow(clippy::needless_range_loop)]
    for o in 0..m {
        let by = |a: &usize, b: &usize| points[front[*a]][o].total_cmp(&points[front[*b]][o]);
        let idx: Vec<usize> = (0..n).collect();
        if let Some(&a) = idx.iter().min_by(|a, b| by(a, b).then(a.cmp(b))) {
            protected[a] = true;
        }
        if let Some(&b) = idx.iter().max_by(|a, b| by(a, b).then(b.cmp(a))) {
            protected[b] = true;
        }
    }
    let scale: Vec<f64> = lo
        .iter()
        .zip(&hi)
        .map(|(l, h)| {
            let span = h - l;
            if span > 0.0 && span.is_finite() {
                1.0 / span
            } else {
                0.0
            }
        })
        .collect();
    // Squared normalised distances; the product of squares orders members as the product of
    // distances does.
    let mut dist = vec![0.0f64; n * n];
    for a in 0..n {
        for b in a + 1..n {
            let d: f64 = (0..m)
                .map(|o| {
                    let x = (points[front[a]][o] - points[front[b]][o]) * scale[o];
                    x * x
                })
                .sum();
            dist[a * n + b] = d;
            dist[b * n + a] = d;
        }
    }
    let mut alive = vec![true; n];
    // For each member: its k nearest alive neighbours and their product.
    let neighbours = |a: usize, alive: &[bool]| -> (Vec<usize>, f64) {
        let mut near: Vec<usize> = (0..n).filter(|&b| b != a && alive[b]).collect();
        near.sort_by(|&x, &y| dist[a * n + x].total_cmp(&dist[a * n + y]).then(x.cmp(&y)));
        near.truncate(k);
        let product = near.iter().map(|&b| dist[a * n + b]).product();
        (near, product)
    };
    let mut state: Vec<(Vec<usize>, f64)> = (0..n).map(|a| neighbours(a, &alive)).collect();
    let mut remaining = n;
    while remaining > keep {
        let worst = (0..n)
            .filter(|&a| alive[a] && !protected[a])
            .min_by(|&a, &b| state[a].1.total_cmp(&state[b].1).then(b.cmp(&a)));
        // Everything left is an extreme point: drop the latest of them.
        let worst = match worst {
            Some(w) => w,
            None => match (0..n).rev().find(|&a| alive[a]) {
                Some(w) => w,
                None => break,
            },
        };
        alive[worst] = false;
        remaining -= 1;
        for a in 0..n {
            if alive[a] && state[a].0.contains(&worst) {
                state[a] = neighbours(a, &alive);
            }
        }
    }
    (0..n).filter(|&a| alive[a]).map(|a| front[a]).collect()
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

    #[test]
    fn nearest_neighbour_pruning_drops_the_most_crowded() {
        // Three objectives; point 4 sits right next to point 3, point 5 is a copy of point 1.
        let p = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![0.5, 0.5, 0.0],
            vec![0.52, 0.48, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.5, 0.5],
        ];
        let all: Vec<usize> = (0..p.len()).collect();
        // The copy goes first, then one of the close pair; the extremes 0, 1, 2 stay.
        assert_eq!(
            prune_nearest_neighbours(&p, &all, 6),
            vec![0, 1, 2, 3, 4, 6]
        );
        let five = prune_nearest_neighbours(&p, &all, 5);
        assert_eq!(five.len(), 5);
        assert!(five.contains(&0) && five.contains(&1) && five.contains(&2) && five.contains(&6));
        assert!(five.contains(&3) != five.contains(&4), "{five:?}");
        assert_eq!(prune_nearest_neighbours(&p, &all, 10), all);
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

        #[test]
        fn pruning_keeps_extremes_and_the_requested_count(
            raw in proptest::collection::vec(proptest::collection::vec(0u8..20, 3), 1..40),
            keep_frac in 0.0f64..1.0,
        ) {
            let points: Vec<Vec<f64>> =
                raw.iter().map(|p| p.iter().map(|&x| f64::from(x)).collect()).collect();
            let front: Vec<usize> = (0..points.len()).collect();
            // At least the six extreme slots, so the protected members always fit.
            let keep = 6 + (keep_frac * points.len() as f64) as usize;
            let kept = prune_nearest_neighbours(&points, &front, keep);
            prop_assert_eq!(kept.len(), keep.min(points.len()));
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            for o in 0..3 {
                let best = points.iter().map(|q| q[o]).fold(f64::INFINITY, f64::min);
                let worst = points.iter().map(|q| q[o]).fold(f64::NEG_INFINITY, f64::max);
                prop_assert!(kept.iter().any(|&i| points[i][o] == best));
                prop_assert!(kept.iter().any(|&i| points[i][o] == worst));
            }
        }
    }
}
