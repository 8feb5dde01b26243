//! The chooser functions of `ipyparallel.controller.task_scheduler` (docs/protocol.md §5.3.3), over the
//! candidates' loads in LRU order (oldest first).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// First index with the minimum load (LRU among the least loaded). Python's default.
    LeastLoad,
    /// Always the front of the LRU line.
    Lru,
    /// Two uniform draws, the smaller (older) index wins.
    TwoBin,
    /// Two draws weighted by 1/(load + 1e-6), the less loaded wins.
    Weighted,
    /// Uniform random.
    PlainRandom,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task scheme {0:?}: use one of {names}", names = Scheme::names().join(", "))]
pub struct UnknownScheme(pub String);

impl Scheme {
    /// Every scheme, in the order help texts list them. The one list of scheme names: the
    /// command line, the TOML file and the help text all take theirs from here.
    pub const ALL: [Scheme; 5] = [Scheme::LeastLoad, Scheme::Lru, Scheme::TwoBin, Scheme::Weighted, Scheme::PlainRandom];

    pub fn names() -> Vec<&'static str> {
        Scheme::ALL.iter().map(|s| s.name()).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Scheme::LeastLoad => "leastload",
            Scheme::Lru => "lru",
            Scheme::TwoBin => "twobin",
            Scheme::Weighted => "weighted",
            Scheme::PlainRandom => "plainrandom",
        }
    }
}

impl FromStr for Scheme {
    type Err = UnknownScheme;

    fn from_str(s: &str) -> Result<Self, UnknownScheme> {
        let want = s.trim().to_ascii_lowercase();
        Scheme::ALL.into_iter().find(|k| k.name() == want).ok_or_else(|| UnknownScheme(s.to_owned()))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SplitMix64: small, fast, deterministic from the configured seed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), like Python's `randint(0, n - 1)`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`, like Python's `random()`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Picks an index into `loads` (`loads` non-empty, in LRU order).
pub(crate) fn choose(scheme: Scheme, rng: &mut Rng, n: usize, load: impl Fn(usize) -> u32) -> usize {
    debug_assert!(n > 0);
    match scheme {
        Scheme::Lru => 0,
        Scheme::LeastLoad => {
            let mut best = 0;
            let mut min = load(0);
            for i in 1..n {
                let l = load(i);
                if l < min {
                    min = l;
                    best = i;
                    if min == 0 {
                        break;
                    }
                }
            }
            best
        }
        Scheme::PlainRandom => rng.below(n),
        Scheme::TwoBin => {
            let a = rng.below(n);
            let b = rng.below(n);
            a.min(b)
        }
        Scheme::Weighted => {
            let w = |i: usize| 1.0 / (1e-6 + f64::from(load(i)));
            let total: f64 = (0..n).map(w).sum();
            let x = rng.unit() * total;
            let y = rng.unit() * total;
            // first index whose cumulative weight reaches the draw (Python: while sums[i] < x)
            let pick = |target: f64| {
                let mut acc = 0.0;
                for i in 0..n {
                    acc += w(i);
                    if acc >= target {
                        return i;
                    }
                }
                n - 1
            };
            let idx = pick(x);
            let idy = pick(y);
            if w(idy) > w(idx) {
                idy
            } else {
                idx
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [Scheme::LeastLoad, Scheme::Lru, Scheme::TwoBin, Scheme::Weighted, Scheme::PlainRandom] {
            assert_eq!(s.name().parse::<Scheme>().ok(), Some(s));
            assert_eq!(s.to_string(), s.name());
        }
        assert!("pure".parse::<Scheme>().is_err());
        assert_eq!("LeastLoad".parse::<Scheme>().ok(), Some(Scheme::LeastLoad));
    }

    #[test]
    fn leastload_is_first_minimum() {
        let loads = [2u32, 1, 3, 1, 0, 0];
        let mut r = Rng::new(1);
        assert_eq!(choose(Scheme::LeastLoad, &mut r, loads.len(), |i| loads[i]), 4);
        let loads = [2u32, 1, 3, 1];
        assert_eq!(choose(Scheme::LeastLoad, &mut r, loads.len(), |i| loads[i]), 1);
        assert_eq!(choose(Scheme::Lru, &mut r, loads.len(), |i| loads[i]), 0);
    }

    #[test]
    fn random_schemes_have_python_shapes() {
        let mut r = Rng::new(42);
        let n = 4;
        let mut plain = [0usize; 4];
        let mut two = [0usize; 4];
        for _ in 0..40_000 {
            plain[choose(Scheme::PlainRandom, &mut r, n, |_| 0)] += 1;
            two[choose(Scheme::TwoBin, &mut r, n, |_| 0)] += 1;
        }
        // plainrandom ~ uniform (10k each)
        assert!(plain.iter().all(|&c| (9_000..11_000).contains(&c)), "{plain:?}");
        // twobin: P(min = i) = ((n-i)^2 - (n-i-1)^2)/n^2 = 7/16, 5/16, 3/16, 1/16
        assert!(two[0] > two[1] && two[1] > two[2] && two[2] > two[3], "{two:?}");
        assert!((16_000..19_000).contains(&two[0]), "{two:?}");
        // weighted: an idle engine (weight 1e6) beats loaded ones essentially always
        let loads = [3u32, 2, 0, 5];
        let mut hits = 0;
        for _ in 0..1000 {
            if choose(Scheme::Weighted, &mut r, n, |i| loads[i]) == 2 {
                hits += 1;
            }
        }
        assert!(hits >= 999, "{hits}");
        // among equally loaded engines weighted is uniform-ish
        let mut w = [0usize; 4];
        for _ in 0..40_000 {
            w[choose(Scheme::Weighted, &mut r, n, |_| 1)] += 1;
        }
        assert!(w.iter().all(|&c| c > 5_000), "{w:?}");
    }
}
