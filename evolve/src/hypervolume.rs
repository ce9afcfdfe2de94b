//! Exact hypervolume (the volume dominated by a set of points and bounded by a reference
//! point, all objectives minimised), for 2 and 3 objectives.
//!
//! Points that do not strictly dominate the reference point add nothing and are ignored (as in
//! pymoo). 2-D: one sweep after sorting, O(n log n). 3-D: slices along the third objective,
//! each a 2-D hypervolume, O(n² log n) — exact, and fast enough for populations of hundreds.

/// Why a hypervolume cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervolumeError {
    /// Only 2 and 3 objectives are supported.
    #[error("exact hypervolume is implemented for 2 and 3 objectives, not {0}")]
    Dimensions(usize),
    /// A point's dimension differs from the reference point's.
    #[error("a point has {got} objectives, the reference point {expected}")]
    Mismatch {
        /// The reference point's dimension.
        expected: usize,
        /// The point's.
        got: usize,
    },
}

/// The hypervolume of `points` with respect to `reference`.
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> Result<f64, HypervolumeError> {
    let m = reference.len();
    if let Some(p) = points.iter().find(|p| p.len() != m) {
        return Err(HypervolumeError::Mismatch {
            expected: m,
            got: p.len(),
        });
    }
    let inside: Vec<&Vec<f64>> = points
        .iter()
        .filter(|p| p.iter().zip(reference).all(|(x, r)| x < r))
        .collect();
    match m {
        2 => Ok(hv2(
            inside.iter().map(|p| (p[0], p[1])).collect(),
            reference[0],
            reference[1],
        )),
        3 => Ok(hv3(&inside, reference)),
        _ => Err(HypervolumeError::Dimensions(m)),
    }
}

fn hv2(mut pts: Vec<(f64, f64)>, r0: f64, r1: f64) -> f64 {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut volume = 0.0;
    let mut best = r1;
    for (x, y) in pts {
        if y < best {
            volume += (r0 - x) * (best - y);
            best = y;
        }
    }
    volume
}

fn hv3(points: &[&Vec<f64>], r: &[f64]) -> f64 {
    let mut by_z: Vec<&Vec<f64>> = points.to_vec();
    by_z.sort_by(|a, b| a[2].total_cmp(&b[2]));
    let mut volume = 0.0;
    for i in 0..by_z.len() {
        let z = by_z[i][2];
        let next = by_z.get(i + 1).map_or(r[2], |p| p[2]);
        if next <= z {
            continue;
        }
        let slice: Vec<(f64, f64)> = by_z[..=i].iter().map(|p| (p[0], p[1])).collect();
        volume += hv2(slice, r[0], r[1]) * (next - z);
    }
    volume
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes() {
        let hv = hypervolume(&[vec![0.0, 0.0]], &[1.0, 2.0]).unwrap();
        assert_eq!(hv, 2.0);
        let hv = hypervolume(&[vec![0.0, 1.0], vec![1.0, 0.0]], &[2.0, 2.0]).unwrap();
        assert_eq!(hv, 3.0);
        // Dominated and outside points add nothing.
        let hv = hypervolume(
            &[
                vec![0.0, 1.0],
                vec![1.0, 0.0],
                vec![1.5, 1.5],
                vec![3.0, 0.0],
            ],
            &[2.0, 2.0],
        )
        .unwrap();
        assert_eq!(hv, 3.0);
        let hv = hypervolume(&[vec![0.0, 0.0, 0.0]], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(hv, 6.0);
        // Two boxes [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] overlap in a unit cube: 2+2-1.
        let hv = hypervolume(
            &[vec![0.0, 1.0, 1.0], vec![1.0, 0.0, 1.0]],
            &[2.0, 2.0, 2.0],
        )
        .unwrap();
        assert_eq!(hv, 3.0);
        let hv = hypervolume(
            &[vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 1.0]],
            &[2.0, 2.0, 2.0],
        )
        .unwrap();
        assert_eq!(hv, 1.0 * 1.0 + 4.0 * 1.0);
        assert!(hypervolume(&[vec![0.0; 4]], &[1.0; 4]).is_err());
        assert!(hypervolume(&[vec![0.0; 3]], &[1.0; 2]).is_err());
    }

    #[test]
    fn true_fronts_match_their_analytic_hypervolume() {
        // ZDT1: f2 = 1 - sqrt(f1); exact HV at (1.1, 1.1) = 0.1 + 2/3 + 0.11.
        let n = 20_000;
        let zdt1: Vec<Vec<f64>> = (0..=n)
            .map(|i| {
                let f1 = i as f64 / n as f64;
                vec![f1, 1.0 - f1.sqrt()]
            })
            .collect();
        let hv = hypervolume(&zdt1, &[1.1, 1.1]).unwrap();
        assert!((hv - (0.1 + 2.0 / 3.0 + 0.11)).abs() < 1e-3, "{hv}");
        // DTLZ2: the positive unit-sphere octant; HV = 1.1^3 - pi/6.
        let k = 120;
        let mut sphere = Vec::new();
        for i in 0..=k {
            for j in 0..=k {
                let a = i as f64 / k as f64 * core::f64::consts::FRAC_PI_2;
                let b = j as f64 / k as f64 * core::f64::consts::FRAC_PI_2;
                sphere.push(vec![a.cos() * b.cos(), a.cos() * b.sin(), a.sin()]);
            }
        }
        let hv = hypervolume(&sphere, &[1.1, 1.1, 1.1]).unwrap();
        let exact = 1.331 - core::f64::consts::PI / 6.0;
        assert!(hv < exact && exact - hv < 0.02, "{hv} vs {exact}");
    }
}
