//! Summary statistics over seeds and least-squares fits.

use serde::{Deserialize, Serialize};

/// Mean and sample standard deviation of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Stat {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Stat { mean, std: var.sqrt(), n }
    }
}

impl Stat {
    /// Half-width of the two-sided 95% confidence interval of the mean (Student's t with n - 1
    /// degrees of freedom); NaN with fewer than two measurements.
    pub fn ci95(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        t975(self.n - 1) * self.std / (self.n as f64).sqrt()
    }
}

/// The 0.975 quantile of Student's t distribution with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => 1.960 + 2.4 / df as f64,
    }
}

/// `y = intercept + slope * x`, fitted by ordinary least squares.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    /// Standard error of the slope (0 with fewer than three points).
    pub slope_stderr: f64,
    /// Coefficient of determination.
    pub r2: f64,
}

impl LineFit {
    /// Fits `points` (x, y); needs at least two distinct x.
    pub fn fit(points: &[(f64, f64)]) -> Option<LineFit> {
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if points.len() < 2 || sxx <= 0.0 {
            return None;
        }
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
        let slope = sxy / sxx;
        let intercept = my - slope * mx;
        let sse: f64 = points.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
        let slope_stderr = if points.len() > 2 { (sse / (n - 2.0) / sxx).sqrt() } else { 0.0 };
        let r2 = if syy > 0.0 { 1.0 - sse / syy } else { 1.0 };
        Some(LineFit { slope, intercept, slope_stderr, r2 })
    }

    /// Fits `ln y = a + b ln x`: `slope` is the exponent of a power law `y ~ x^b`. `None` when
    /// a value is not positive (a gradient that is exactly zero has no logarithm).
    pub fn fit_log_log(points: &[(f64, f64)]) -> Option<LineFit> {
        if points.iter().any(|&(x, y)| !(x > 0.0 && y > 0.0)) {
            return None;
        }
        let logs: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x.ln(), y.ln())).collect();
        LineFit::fit(&logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_interval_of_the_mean() {
        // Three measurements 1, 2, 3: mean 2, sd 1, t(2) = 4.303 -> 4.303 / sqrt(3).
        let s = Stat::of(&[1.0, 2.0, 3.0]);
        assert!((s.ci95() - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert!(Stat::of(&[1.0]).ci95().is_nan());
        assert!((t975(1000) - 1.962).abs() < 0.01);
    }

    #[test]
    fn stat_of_known_values() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[7.0]).std, 0.0);
    }

    #[test]
    fn exact_line() {
        let f = LineFit::fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-12 && (f.intercept - 1.0).abs() < 1e-12);
        assert!(f.slope_stderr < 1e-12 && (f.r2 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn power_law_recovers_exponent() {
        // y = 3 x^-0.5 at the depths of the scan, with +-1% multiplicative noise.
        let noise = [1.01, 0.99, 1.0, 1.01, 0.99];
        let pts: Vec<(f64, f64)> =
            [6.0, 8.0, 10.0, 12.0, 14.0].iter().zip(noise).map(|(&l, e)| (l, 3.0 * f64::powf(l, -0.5) * e)).collect();
        let f = LineFit::fit_log_log(&pts).unwrap();
        assert!((f.slope + 0.5).abs() < 0.05, "{f:?}");
        assert!(f.slope_stderr > 0.0 && f.slope_stderr < 0.05);
    }

    #[test]
    fn degenerate_fits() {
        assert!(LineFit::fit(&[(1.0, 2.0)]).is_none());
        assert!(LineFit::fit(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
        assert!(LineFit::fit_log_log(&[(1.0, 2.0), (2.0, 0.0)]).is_none());
    }
}
