//! What the HTTP load tools share: the send schedule of one connection, reading one
//! answer off a keep-alive connection, and the one JSON line they print (row.py `load`).
//! Included by each tool with `#[path = "report.rs"] mod report;`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;

/// When connection `c` of `connections` sends: at once, or with `--rate` on a fixed
/// schedule offset per connection so they do not send together.
pub struct Schedule {
    due: Option<Instant>,
    gap: Option<Duration>,
}

impl Schedule {
    pub fn new(rate: Option<f64>, connections: usize, c: usize, started: Instant) -> Schedule {
        let gap = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
        let due = gap.map(|g| started + g.mul_f64(c as f64 / connections as f64));
        Schedule { due, gap }
    }

    /// Waits for the next send; returns the moment its latency counts from.
    pub async fn next(&mut self) -> Instant {
        let (Some(due), Some(gap)) = (&mut self.due, self.gap) else {
            return Instant::now();
        };
        let scheduled = *due;
        *due += gap;
        if Instant::now() >= scheduled {
            // Held back by the previous answer: that wait counts.
            scheduled
        } else {
            // The timer wakes up to 1 ms late; that wait does not.
            tokio::time::sleep_until(scheduled.into()).await;
            Instant::now()
        }
    }
}

/// One answer: its status and whether the server closes the connection after it.
pub struct Answer {
    pub status: u16,
    pub close: bool,
}

/// Reads one answer (status line, headers, `Content-Length` body); `None` when the
/// server closed the connection first.
pub async fn read_answer(conn: &mut BufReader<TcpStream>, line: &mut String) -> Option<Answer> {
    line.clear();
    if conn.read_line(line).await.unwrap_or(0) == 0 {
        return None;
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        conn.read_line(line).await.ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.trim().eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.ok()?;
    Some(Answer { status, close })
}

/// Latencies and answers of one connection, merged into the run's.
#[derive(Default)]
pub struct Tally {
    pub lat: Vec<Duration>,
    pub statuses: BTreeMap<u16, u64>,
}

impl Tally {
    pub fn record(&mut self, status: u16, latency: Duration) {
        self.lat.push(latency);
        *self.statuses.entry(status).or_default() += 1;
    }

    /// A request that got no answer: counted as status 0, its time not in the latencies.
    pub fn failed(&mut self) {
        *self.statuses.entry(0).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.lat.extend(other.lat);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
    }

    /// The counts as printed: `"status:count"`.
    pub fn labels(&self) -> Vec<String> {
        self.statuses
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect()
    }
}

/// Prints the run's line: sent, `statuses`, req/s, p50/p99/p99.9 in ms, seconds.
pub fn print(mut lat: Vec<Duration>, statuses: &[String], started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{{\"sent\":{},\"statuses\":{:?},\"rps\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"seconds\":{:.2}}}",
        lat.len(),
        statuses,
        lat.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(0.999),
        elapsed
    );
}
