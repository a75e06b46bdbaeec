//! Idle terminal connections: many terminals stay connected all day and send nothing between
//! sales. `--idle-connections N` opens N such connections before the load, keeps them while
//! the sales run, checks the gateway still holds them afterwards, and reads the gateway
//! process's resident memory (`VmRSS` in `/proc/<pid>/status`) before and after opening them.
//!
//! Each connection costs a file descriptor in the gateway, and in this process too; with the
//! gateway in this process (`--spawn`) two. The soft `RLIMIT_NOFILE` (`ulimit -n`) must allow
//! it; this module reads the limit from `/proc/self/limits` and says what to raise rather than
//! failing half-way. On a loopback gateway they come from several source addresses (127.1.0.1
//! upwards, 200 each), under the gateway's per-address connection cap.

use serde::Serialize;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Connections opened at once while setting up (a burst larger than the listen backlog only
/// makes the kernel drop and retry SYNs).
const OPEN_AT_ONCE: usize = 256;
/// Descriptors kept free for the load itself, the journal and the wallet API.
const SPARE_DESCRIPTORS: u64 = 512;

/// What the idle connections cost and whether they stayed.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Asked for.
    pub requested: usize,
    /// Opened.
    pub opened: usize,
    /// Still open (not closed by the gateway) after the load.
    pub still_open: usize,
    /// The process whose memory was read (the gateway), if known.
    pub gateway_pid: Option<u32>,
    /// Its resident memory before the idle connections, KiB.
    pub rss_before_kib: Option<u64>,
    /// With the idle connections open, before the load, KiB.
    pub rss_idle_kib: Option<u64>,
    /// After the load, KiB.
    pub rss_after_load_kib: Option<u64>,
    /// (rss_idle - rss_before) / opened, bytes.
    pub bytes_per_connection: Option<f64>,
    /// Whether the figure includes this process's client ends (gateway in-process).
    pub includes_client_side: bool,
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{v} KiB"));
        writeln!(
            f,
            "  idle connections: {} asked, {} opened, {} still open after the load",
            self.requested, self.opened, self.still_open
        )?;
        write!(
            f,
            "  gateway RSS: {} before, {} with them, {} after the load",
            kib(self.rss_before_kib),
            kib(self.rss_idle_kib),
            kib(self.rss_after_load_kib)
        )?;
        if let Some(bytes) = self.bytes_per_connection {
            write!(
                f,
                "\n  memory per idle connection: {:.1} KiB{}",
                bytes / 1024.0,
                if self.includes_client_side {
                    " (gateway in this process: includes the client end)"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// Idle connections per source address: below the gateway's default per-address cap
/// (`terminal.max_connections_per_address`, 256), as terminals come from many addresses.
const PER_SOURCE: usize = 200;

/// The source address of idle connection `index`: on a loopback gateway, one of 127.1.0.1,
/// 127.1.0.2, ... (all of 127.0.0.0/8 is this machine) for every [`PER_SOURCE`] connections;
/// elsewhere whatever the system picks.
fn source_for(terminal: SocketAddr, index: usize) -> Option<std::net::Ipv4Addr> {
    match terminal.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => {
            let n = u32::try_from(index / PER_SOURCE).ok()?;
            Some(std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(127, 1, 0, 1)) + n,
            ))
        }
        _ => None,
    }
}

async fn connect_from(
    terminal: SocketAddr,
    source: Option<std::net::Ipv4Addr>,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(terminal).await;
    };
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    socket.connect(terminal).await
}

/// Idle connections held open.
#[derive(Debug)]
pub struct IdleSet {
    streams: Vec<TcpStream>,
    report: IdleReport,
}

impl IdleSet {
    /// Opens `count` connections to the gateway's terminal port.
    pub async fn open(
        terminal: SocketAddr,
        count: usize,
        gateway_pid: Option<u32>,
    ) -> anyhow::Result<IdleSet> {
        let in_process = gateway_pid == Some(std::process::id());
        check_descriptors(count, in_process)?;
        let rss_before_kib = gateway_pid.and_then(rss_kib);
        let mut streams = Vec::with_capacity(count);
        while streams.len() < count {
            let burst = OPEN_AT_ONCE.min(count - streams.len());
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..burst {
                set.spawn(connect_from(
                    terminal,
                    source_for(terminal, streams.len() + set.len()),
                ));
            }
            while let Some(opened) = set.join_next().await {
                let stream = opened??;
                streams.push(stream);
            }
        }
        // Give the gateway a moment to accept and set up the last ones before reading memory.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let rss_idle_kib = gateway_pid.and_then(rss_kib);
        let opened = streams.len();
        Ok(IdleSet {
            streams,
            report: IdleReport {
                requested: count,
                opened,
                still_open: 0,
                gateway_pid,
                rss_before_kib,
                rss_idle_kib,
                rss_after_load_kib: None,
                bytes_per_connection: match (rss_before_kib, rss_idle_kib) {
                    (Some(before), Some(idle)) if opened > 0 => {
                        Some(idle.saturating_sub(before) as f64 * 1024.0 / opened as f64)
                    }
                    _ => None,
                },
                includes_client_side: in_process,
            },
        })
    }

    /// After the load: counts the connections the gateway still holds, reads its memory again
    /// and closes them.
    pub async fn finish(mut self) -> anyhow::Result<IdleReport> {
        let mut probe = [0u8; 1];
        self.report.still_open = self
            .streams
            .iter()
            .filter(|stream| match stream.try_read(&mut probe) {
                // Nothing to read and not closed: the gateway still holds it.
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                Ok(_) => false,
            })
            .count();
        self.report.rss_after_load_kib = self.report.gateway_pid.and_then(rss_kib);
        drop(self.streams);
        Ok(self.report)
    }
}

/// Resident memory of a process, KiB, from `/proc/<pid>/status` (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The soft limit on open files of this process, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

fn check_descriptors(count: usize, in_process: bool) -> anyhow::Result<()> {
    let per_connection = if in_process { 2 } else { 1 };
    let needed = (count as u64)
        .saturating_mul(per_connection)
        .saturating_add(SPARE_DESCRIPTORS);
    match open_files_limit() {
        Some(limit) if limit < needed => anyhow::bail!(
            "{count} idle connections need about {needed} open files in this process but the limit is {limit}: \
             raise it (`ulimit -n {needed}`){}",
            if in_process {
                ", or run the gateway as its own process (`posbridge serve`) and give the bench --terminal, --wallet and --gateway-pid, which halves what this process needs"
            } else {
                ""
            }
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_this_process_memory_and_limits() {
        let rss = rss_kib(std::process::id()).unwrap();
        assert!(rss > 0);
        assert!(open_files_limit().unwrap() > 0);
        assert!(check_descriptors(usize::MAX / 4, true).is_err());
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
