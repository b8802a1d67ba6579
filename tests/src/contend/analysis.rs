//! Reads a run's log back (see `log.rs` for its lines) and computes what the bench prints and
//! what the scale run checks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How a holder's section ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Still open when the log ended.
    Open,
    /// `exit`: the guard was not lost.
    Exit,
    /// `lost`: the guard reported the lease lost before the holder left its section.
    Lost,
    /// `kill`: the parent killed the holder inside its section.
    Killed,
}

/// One critical section.
#[derive(Debug)]
struct Interval {
    id: String,
    end: End,
    entered: u64,
}

/// Two holders inside at once, by the log: `earlier` was inside when `later` entered.
#[derive(Debug)]
pub struct Overlap {
    /// The holder that was inside.
    pub earlier: String,
    /// The holder that entered.
    pub later: String,
    /// Whether the earlier holder's guard reported the loss before it left (holder knew
    /// first: the lock was taken over from a paused or cut-off holder, as it may be).
    pub excused: bool,
}

/// Per worker: sections and waits.
#[derive(Debug, Default, Clone)]
pub struct Worker {
    /// Sections entered.
    pub entries: usize,
    /// Waits, want to enter, in nanoseconds.
    pub waits: Vec<u64>,
}

impl Worker {
    /// The mean wait in nanoseconds.
    pub fn mean_wait(&self) -> f64 {
        if self.waits.is_empty() {
            0.0
        } else {
            self.waits.iter().sum::<u64>() as f64 / self.waits.len() as f64
        }
    }

    /// The longest wait in nanoseconds.
    pub fn max_wait(&self) -> u64 {
        self.waits.iter().copied().max().unwrap_or(0)
    }
}

/// What a log shows.
#[derive(Debug, Default)]
pub struct Analysis {
    /// Sections entered.
    pub entries: usize,
    /// Sections left with `exit`.
    pub exits: usize,
    /// Sections left with `lost` (the holder learned of the loss before leaving).
    pub lost: usize,
    /// Holders killed inside their section.
    pub kills: usize,
    /// Holders stopped (`SIGSTOP`) inside their section.
    pub stops: usize,
    /// Overlaps by the log (each pair once).
    pub overlaps: Vec<Overlap>,
    /// Marker collisions (O_EXCL create failed), with whether the marker's owner reported loss.
    pub marker_collisions: Vec<Overlap>,
    /// Enters with a fencing token.
    pub tokens: usize,
    /// Enters whose token was not greater than the previous one (in enter order).
    pub token_regressions: Vec<(u64, u64)>,
    /// Sections with no end (no exit, lost or kill).
    pub unfinished: Vec<String>,
    /// From a killed holder's death to the next enter, nanoseconds, per kill.
    pub stranded: Vec<u64>,
    /// From a release with others waiting to the next enter, nanoseconds.
    pub handoffs: Vec<u64>,
    /// Releases with others waiting after which the releaser entered again first.
    pub barges: usize,
    /// Lost holders whose lock was taken over while they were inside (distinct sections).
    taken_over: usize,
    /// Per worker id.
    pub workers: BTreeMap<String, Worker>,
    /// `go` to the last line, nanoseconds.
    pub wall: u64,
    /// Time spent inside sections (enter to exit, lost or kill), summed, nanoseconds.
    pub held: u64,
}

impl Analysis {
    /// Overlaps by the log that no loss excuses.
    pub fn unexcused_overlaps(&self) -> usize {
        self.overlaps.iter().filter(|o| !o.excused).count()
    }

    /// Marker collisions that no loss excuses.
    pub fn unexcused_collisions(&self) -> usize {
        self.marker_collisions.iter().filter(|o| !o.excused).count()
    }

    /// Overlaps excused by a holder that knew it had lost the lock first.
    pub fn excused_overlaps(&self) -> usize {
        self.overlaps.iter().filter(|o| o.excused).count()
    }

    /// Lost holders whose lock was taken over while they were still in their section.
    pub fn taken_over(&self) -> usize {
        self.taken_over
    }

    /// Jain's fairness index of the workers' mean waits: 1 = all waited alike, 1/n = one
    /// worker did all the waiting.
    pub fn jain(&self) -> f64 {
        let xs: Vec<f64> = self.workers.values().map(Worker::mean_wait).collect();
        let sum: f64 = xs.iter().sum();
        let squares: f64 = xs.iter().map(|x| x * x).sum();
        if squares == 0.0 {
            1.0
        } else {
            sum * sum / (xs.len() as f64 * squares)
        }
    }
}

/// The `q` quantile (0..1) of `values` (nearest rank), nanoseconds.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Formats nanoseconds for a table: `812 µs`, `3.21 ms`, `2.40 s`.
pub fn human(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Reads a log's text. Lines it cannot parse are an error.
pub fn analyse(text: &str) -> Result<Analysis, String> {
    let mut a = Analysis::default();
    let mut intervals: Vec<Interval> = Vec::new();
    // Worker id -> its open interval.
    let mut inside: HashMap<String, usize> = HashMap::new();
    // Worker id -> when it started waiting.
    let mut waiting: HashMap<String, u64> = HashMap::new();
    // Overlaps and collisions refer to the earlier holder's interval; excused once it ends lost.
    let mut overlap_of: Vec<usize> = Vec::new();
    let mut collision_of: Vec<Option<usize>> = Vec::new();
    let mut last_token: Option<u64> = None;
    // The last release: when, by whom, whether others were waiting then.
    let mut last_release: Option<(u64, String, bool)> = None;
    let mut pending_kill: Option<u64> = None;
    let (mut first, mut last) = (None::<u64>, 0u64);
    // In time order: a line is written just after its timestamp is taken, and a process can be
    // paused in between (CLOCK_MONOTONIC is one clock for every process of the machine).
    let mut lines: Vec<(usize, &str)> = text.lines().enumerate().collect();
    lines.sort_by_key(|(_, line)| line.split(' ').nth(3).and_then(|t| t.parse::<u64>().ok()));
    for (n, line) in lines {
        let bad = || format!("log line {}: cannot read {line:?}", n + 1);
        let mut parts = line.split(' ');
        let (Some(kind), Some(id), Some(token), Some(t)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let token: Option<u64> = match token {
            "-" => None,
            t => Some(t.parse().map_err(|_| bad())?),
        };
        let t: u64 = t.parse().map_err(|_| bad())?;
        let extra = parts.next();
        let id = id.to_string();
        last = last.max(t);
        match kind {
            "go" => {
                first.get_or_insert(t);
            }
            "want" => {
                waiting.insert(id, t);
            }
            "overlap" => {
                let with = extra.unwrap_or("?");
                collision_of.push(inside.get(with).copied());
                a.marker_collisions.push(Overlap {
                    earlier: with.to_string(),
                    later: id,
                    excused: false,
                });
            }
            "enter" => {
                a.entries += 1;
                let worker = a.workers.entry(id.clone()).or_default();
                worker.entries += 1;
                if let Some(since) = waiting.remove(&id) {
                    worker.waits.push(t.saturating_sub(since));
                }
                for (other, &interval) in &inside {
                    if *other != id {
                        overlap_of.push(interval);
                        a.overlaps.push(Overlap {
                            earlier: other.clone(),
                            later: id.clone(),
                            excused: false,
                        });
                    }
                }
                if let Some(token) = token {
                    a.tokens += 1;
                    if let Some(previous) = last_token
                        && token <= previous
                    {
                        a.token_regressions.push((previous, token));
                    }
                    last_token = Some(token);
                }
                if let Some((released, by, contended)) = last_release.take()
                    && contended
                {
                    a.handoffs.push(t.saturating_sub(released));
                    if by == id {
                        a.barges += 1;
                    }
                }
                if let Some(killed) = pending_kill.take() {
                    a.stranded.push(t.saturating_sub(killed));
                }
                intervals.push(Interval {
                    id: id.clone(),
                    end: End::Open,
                    entered: t,
                });
                if let Some(previous) = inside.insert(id, intervals.len() - 1) {
                    // The same worker entered twice without leaving: cannot happen.
                    a.unfinished.push(intervals[previous].id.clone());
                }
            }
            "exit" | "lost" | "kill" => {
                let Some(interval) = inside.remove(&id) else {
                    if kind == "kill" {
                        // Killed while not inside (the parent only kills holders, but keep it).
                        continue;
                    }
                    return Err(format!(
                        "log line {}: {kind} of {id} without an enter",
                        n + 1
                    ));
                };
                a.held += t.saturating_sub(intervals[interval].entered);
                intervals[interval].end = match kind {
                    "exit" => {
                        a.exits += 1;
                        End::Exit
                    }
                    "lost" => {
                        a.lost += 1;
                        End::Lost
                    }
                    _ => {
                        a.kills += 1;
                        pending_kill = Some(t);
                        waiting.remove(&id);
                        End::Killed
                    }
                };
                if kind == "kill" {
                    last_release = None;
                } else {
                    let contended = waiting.keys().any(|w| *w != id);
                    last_release = Some((t, id, contended));
                }
            }
            "stop" => {
                a.stops += 1;
            }
            "cont" => {}
            _ => return Err(bad()),
        }
    }
    for (overlap, &interval) in a.overlaps.iter_mut().zip(&overlap_of) {
        overlap.excused = intervals[interval].end == End::Lost;
    }
    let mut taken: Vec<usize> = overlap_of
        .iter()
        .copied()
        .filter(|&i| intervals[i].end == End::Lost)
        .collect();
    taken.sort_unstable();
    taken.dedup();
    a.taken_over = taken.len();
    for (collision, interval) in a.marker_collisions.iter_mut().zip(&collision_of) {
        collision.excused = interval.is_some_and(|i| intervals[i].end == End::Lost);
    }
    for interval in &intervals {
        if interval.end == End::Open {
            a.unfinished.push(interval.id.clone());
        }
    }
    a.wall = first.map_or(0, |first| last.saturating_sub(first));
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_overlaps_and_excuses_a_lost_holder() {
        let log =
            "go p - 0\nwant 1 - 1\nwant 2 - 1\nenter 1 5 2\nenter 2 6 3\nexit 2 6 4\nexit 1 5 5\n";
        let a = analyse(log).unwrap();
        assert_eq!(a.unexcused_overlaps(), 1);
        let log = "want 1 - 1\nwant 2 - 1\nenter 1 5 2\noverlap 2 - 3 1\nenter 2 6 3\nexit 2 6 4\nlost 1 5 5\n";
        let a = analyse(log).unwrap();
        assert_eq!((a.unexcused_overlaps(), a.excused_overlaps()), (0, 1));
        assert_eq!(a.unexcused_collisions(), 0);
        assert!(a.token_regressions.is_empty());
    }

    #[test]
    fn tokens_barging_and_kills() {
        let log = "want 1 - 0\nwant 2 - 0\nenter 1 5 1\nexit 1 5 2\nwant 1 - 2\nenter 1 4 3\nkill 1 - 4\nenter 2 7 9\nexit 2 7 10\nenter 1 8 11\n";
        let a = analyse(log).unwrap();
        assert_eq!(a.token_regressions, vec![(5, 4)]);
        assert_eq!(a.barges, 1);
        assert_eq!(a.stranded, vec![5]);
        assert_eq!(a.unfinished, vec!["1".to_string()]);
    }
}
