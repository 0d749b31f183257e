//! Choosing a replica: power of two choices on calls in flight, the least loaded one, and
//! round robin (for comparison). Pure functions over a snapshot of the replicas' loads.

/// A replica as a choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Calls sent to it that have not ended.
    pub in_flight: usize,
    /// Not known to be down (NOT_SERVING, unreachable, draining).
    pub eligible: bool,
}

/// The replicas a call may go to: the eligible ones but `exclude`; when none is eligible,
/// every one but `exclude`, so that the call fails with the replica's own error rather than
/// with none (and finds one that came back before its probe said so).
pub fn candidates(loads: &[Load], exclude: Option<usize>) -> Vec<usize> {
    let others = || (0..loads.len()).filter(move |&i| Some(i) != exclude);
    let eligible: Vec<usize> = others().filter(|&i| loads[i].eligible).collect();
    if eligible.is_empty() {
        others().collect()
    } else {
        eligible
    }
}

/// Power of two choices: two distinct candidates drawn with `random`, the one with fewer
/// calls in flight (the first drawn on a tie). Near the least loaded, without every caller
/// herding onto the same replica between two updates of the loads.
pub fn two_choices(loads: &[Load], exclude: Option<usize>, random: u64) -> Option<usize> {
    let candidates = candidates(loads, exclude);
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let first = (random % n as u64) as usize;
            let step = 1 + ((random >> 32) % (n as u64 - 1)) as usize;
            let second = (first + step) % n;
            let (a, b) = (candidates[first], candidates[second]);
            Some(if loads[b].in_flight < loads[a].in_flight {
                b
            } else {
                a
            })
        }
    }
}

/// The candidate with the fewest calls in flight; ties broken by `random`.
pub fn least_loaded(loads: &[Load], exclude: Option<usize>, random: u64) -> Option<usize> {
    let candidates = candidates(loads, exclude);
    let least = candidates.iter().map(|&i| loads[i].in_flight).min()?;
    let tied: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| loads[i].in_flight == least)
        .collect();
    Some(tied[(random % tied.len() as u64) as usize])
}

/// The candidate after `counter` turns of round robin.
pub fn round_robin(loads: &[Load], exclude: Option<usize>, counter: u64) -> Option<usize> {
    let candidates = candidates(loads, exclude);
    if candidates.is_empty() {
        return None;
    }
    Some(candidates[(counter % candidates.len() as u64) as usize])
}

/// Most calls in flight on an eligible replica minus the fewest (0 with fewer than two).
pub fn imbalance(loads: &[Load]) -> usize {
    let eligible = loads.iter().filter(|l| l.eligible).map(|l| l.in_flight);
    match (eligible.clone().max(), eligible.min()) {
        (Some(max), Some(min)) => max - min,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(in_flight: &[usize]) -> Vec<Load> {
        in_flight
            .iter()
            .map(|&n| Load {
                in_flight: n,
                eligible: true,
            })
            .collect()
    }

    /// Deterministic "random" numbers for the draws.
    fn draws() -> impl Iterator<Item = u64> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        std::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    #[test]
    fn two_choices_never_picks_the_busiest_of_two_nor_a_down_one() {
        let two = loads(&[5, 1]);
        for r in draws().take(100) {
            assert_eq!(two_choices(&two, None, r), Some(1));
        }
        let mut three = loads(&[0, 3, 2]);
        three[0].eligible = false;
        for r in draws().take(100) {
            assert_eq!(two_choices(&three, None, r), Some(2));
        }
    }

    #[test]
    fn two_choices_spread_calls_over_equal_replicas() {
        let four = loads(&[0, 0, 0, 0]);
        let mut picked = [0usize; 4];
        for r in draws().take(4000) {
            picked[two_choices(&four, None, r).unwrap()] += 1;
        }
        assert!(picked.iter().all(|&n| n > 700), "{picked:?}");
    }

    #[test]
    fn two_choices_keep_the_least_loaded_busiest_replica_idle() {
        // Of 4 replicas the busiest is drawn as either choice and always loses.
        let four = loads(&[1, 9, 1, 1]);
        for r in draws().take(1000) {
            assert_ne!(two_choices(&four, None, r), Some(1));
        }
    }

    #[test]
    fn a_retry_excludes_the_replica_that_failed() {
        let two = loads(&[0, 7]);
        for r in draws().take(100) {
            assert_eq!(two_choices(&two, Some(0), r), Some(1));
            assert_eq!(least_loaded(&two, Some(0), r), Some(1));
        }
        assert_eq!(two_choices(&loads(&[0]), Some(0), 1), None);
        assert_eq!(least_loaded(&[], None, 1), None);
    }

    #[test]
    fn with_every_replica_down_a_call_still_goes_somewhere() {
        let mut down = loads(&[0, 0]);
        down.iter_mut().for_each(|l| l.eligible = false);
        assert!(two_choices(&down, None, 3).is_some());
        assert_eq!(candidates(&down, Some(1)), [0]);
    }

    #[test]
    fn least_loaded_breaks_ties_and_round_robin_cycles() {
        let three = loads(&[2, 1, 1]);
        let mut seen = [false; 3];
        for r in draws().take(100) {
            let i = least_loaded(&three, None, r).unwrap();
            assert_ne!(i, 0);
            seen[i] = true;
        }
        assert!(seen[1] && seen[2]);
        let picks: Vec<_> = (0..6)
            .map(|c| round_robin(&three, None, c).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(imbalance(&three), 1);
    }
}
