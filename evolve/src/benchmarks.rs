//! Standard test problems: ZDT1–3 (Zitzler, Deb & Thiele 2000) with 30 variables and DTLZ2
//! (Deb, Thiele, Laumanns & Zitzler 2002) with 3 objectives and 12 variables, all on `[0, 1]`.

use rand_core::Rng;

use crate::operators::{Pm, Sbx, polynomial_mutation, sbx};
use crate::problem::Problem;
use crate::random::uniform;

/// Which test problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestProblem {
    /// Convex front `f2 = 1 − √f1`.
    Zdt1,
    /// Concave front `f2 = 1 − f1²`.
    Zdt2,
    /// Disconnected front.
    Zdt3,
    /// The unit sphere's positive octant, 3 objectives.
    Dtlz2,
}

impl core::str::FromStr for TestProblem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zdt1" => Ok(TestProblem::Zdt1),
            "zdt2" => Ok(TestProblem::Zdt2),
            "zdt3" => Ok(TestProblem::Zdt3),
            "dtlz2" => Ok(TestProblem::Dtlz2),
            _ => Err(format!(
                "unknown problem `{s}`: expected zdt1, zdt2, zdt3 or dtlz2"
            )),
        }
    }
}

/// A real-valued test problem with SBX and polynomial mutation.
#[derive(Debug, Clone)]
pub struct RealBenchmark {
    /// Which problem.
    pub problem: TestProblem,
    /// Number of variables.
    pub n_var: usize,
    /// Crossover settings.
    pub sbx: Sbx,
    /// Mutation settings.
    pub pm: Pm,
    lower: Vec<f64>,
    upper: Vec<f64>,
}

impl RealBenchmark {
    /// The problem with its standard size (30 variables for ZDT, 12 for DTLZ2) and pymoo's
    /// operator defaults.
    pub fn new(problem: TestProblem) -> Self {
        let n_var = match problem {
            TestProblem::Dtlz2 => 12,
            _ => 30,
        };
        RealBenchmark {
            problem,
            n_var,
            sbx: Sbx::default(),
            pm: Pm::default(),
            lower: vec![0.0; n_var],
            upper: vec![1.0; n_var],
        }
    }

    /// The objectives of `x`.
    pub fn evaluate(&self, x: &[f64]) -> Vec<f64> {
        match self.problem {
            TestProblem::Zdt1 | TestProblem::Zdt2 | TestProblem::Zdt3 => {
                let f1 = x[0];
                let g = 1.0 + 9.0 * x[1..].iter().sum::<f64>() / (x.len() - 1) as f64;
                let r = f1 / g;
                let h = match self.problem {
                    TestProblem::Zdt1 => 1.0 - r.sqrt(),
                    TestProblem::Zdt2 => 1.0 - r * r,
                    _ => 1.0 - r.sqrt() - r * (10.0 * core::f64::consts::PI * f1).sin(),
                };
                vec![f1, g * h]
            }
            TestProblem::Dtlz2 => {
                let m = 3;
                let g: f64 = x[m - 1..].iter().map(|v| (v - 0.5) * (v - 0.5)).sum();
                let a = x[0] * core::f64::consts::FRAC_PI_2;
                let b = x[1] * core::f64::consts::FRAC_PI_2;
                vec![
                    (1.0 + g) * a.cos() * b.cos(),
                    (1.0 + g) * a.cos() * b.sin(),
                    (1.0 + g) * a.sin(),
                ]
            }
        }
    }
}

impl Problem for RealBenchmark {
    type Genome = Vec<f64>;

    fn n_objectives(&self) -> usize {
        match self.problem {
            TestProblem::Dtlz2 => 3,
            _ => 2,
        }
    }

    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<f64> {
        (0..self.n_var).map(|_| uniform(rng)).collect()
    }

    fn crossover<R: Rng + ?Sized>(
        &self,
        a: &Vec<f64>,
        b: &Vec<f64>,
        rng: &mut R,
    ) -> (Vec<f64>, Vec<f64>) {
        sbx(a, b, &self.lower, &self.upper, &self.sbx, rng)
    }

    fn mutate<R: Rng + ?Sized>(&self, g: &mut Vec<f64>, rng: &mut R) {
        polynomial_mutation(g, &self.lower, &self.upper, &self.pm, rng);
    }
}
