//! Zipf-distributed ranks: a few items get most of the traffic, as in real shops.

use rand::Rng;

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let n = n.max(1);
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn low_ranks_dominate_and_every_sample_is_in_range() {
        let z = Zipf::new(1000, 1.1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut top10 = 0;
        for _ in 0..20_000 {
            let r = z.sample(&mut rng);
            assert!(r < 1000);
            if r < 10 {
                top10 += 1;
            }
        }
        // With s = 1.1 the first 1% of ranks carries roughly 40% of the mass.
        assert!(top10 > 6_000 && top10 < 11_000, "top10 = {top10}");
    }
}
