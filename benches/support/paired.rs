//! Paired comparisons of two pools' throughput, run by run or block by
//! block, with a distribution-free interval for the median ratio: what the
//! realdb and core benches judge their targets on. Included by `#[path]`.

use serde_json::{json, Value};

/// `a`'s throughput ÷ `b`'s within each block, round or run (a slow
/// stretch of the machine falls on both sides of each ratio): the median,
/// which the targets are judged on, and an interval for it.
#[derive(Clone, Copy)]
pub struct Paired {
    pub median: f64,
    /// A distribution-free interval for the median of the ratios (order
    /// statistics of the binomial, coverage ≥ 95 % with 9 samples or more;
    /// the whole range with fewer): when it holds the bar, this run cannot
    /// tell the two apart.
    pub low: f64,
    pub high: f64,
    coverage: f64,
    /// How many pairs, and what pairs them: "blocks" or "rounds".
    pairs: usize,
    /// How many samples the interval is drawn from (batches of blocks).
    samples: usize,
    basis: &'static str,
}

impl Paired {
    /// The ratios of `a` to `b`, pair by pair. `batch` consecutive pairs
    /// make one sample for the interval (1: each pair on its own): the
    /// median of a batch of blocks, because neighbouring blocks share the
    /// machine's mood of the moment (it changes over a second or two), so
    /// single blocks are not independent and an interval over them would
    /// claim more than the data holds.
    pub fn of(a: &[f64], b: &[f64], basis: &'static str, batch: usize) -> Paired {
        let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        let mut samples: Vec<f64> = ratios.chunks(batch.max(1)).map(median).collect();
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        if n == 0 {
            return Paired {
                median: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
                coverage: 0.0,
                pairs: 0,
                samples: 0,
                basis,
            };
        }
        // The largest k with P(Binomial(n, 1/2) < k) <= 2.5 %: the median
        // lies between the k-th smallest and the k-th largest sample with
        // probability 1 - 2 P(Binomial(n, 1/2) < k).
        let below = |k: usize| -> f64 { (0..k).map(|i| binomial_half(n, i)).sum() };
        let k = (1..=n / 2)
            .take_while(|&k| below(k) <= 0.025)
            .last()
            .unwrap_or(1);
        Paired {
            median: median(&ratios),
            low: samples[k - 1],
            high: samples[n - k],
            coverage: 1.0 - 2.0 * below(k),
            pairs: ratios.len(),
            samples: n,
            basis,
        }
    }

    pub fn json(self) -> Value {
        json!({
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "coverage": self.coverage,
            "pairs": self.pairs,
            "samples": self.samples,
            "basis": self.basis,
        })
    }
}

impl std::fmt::Display for Paired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.3} ({:.0} % interval {:.3}..{:.3}, {} {}",
            self.median,
            self.coverage * 100.0,
            self.low,
            self.high,
            self.pairs,
            self.basis
        )?;
        if self.samples != self.pairs {
            write!(f, " in {} batches", self.samples)?;
        }
        f.write_str(")")
    }
}

/// The median of `xs`: the mean of the two middle values of an even count;
/// NaN when empty. Not the upper middle value: in a batch of 10 that is the
/// 6th of 10, and batch medians taken that way sat about 1 % above the
/// ratios they summarise, so the intervals drawn from them did too.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// P(Binomial(n, 1/2) = i).
fn binomial_half(n: usize, i: usize) -> f64 {
    let ln_choose: f64 = (0..i)
        .map(|j| ((n - j) as f64).ln() - ((j + 1) as f64).ln())
        .sum();
    (ln_choose - n as f64 * std::f64::consts::LN_2).exp()
}
