//! Shared by the speed examples: the median wall time of `f` over 7 runs after 3 warm-up runs.

use std::time::Instant;

pub fn median_time(f: &dyn Fn()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut t: Vec<f64> = (0..7)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[3]
}
