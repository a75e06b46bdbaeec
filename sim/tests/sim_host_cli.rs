//! `posbridge sim host` as a process: an upstream link signs on to it and gets answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use posbridge::infra::security::Security;
use posbridge::upstream::{HostConfig, HostLink, IsoMessage};
use posbridge_hsm::software::SoftwareModule;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sale(amount_minor: u64) -> IsoMessage {
    IsoMessage::new("0200")
        .with(2, "6222021234567890123")
        .with(3, "000000")
        .with(4, format!("{amount_minor:012}"))
        .with(32, "48020000")
        .with(41, "12345678")
        .with(49, "156")
}

#[tokio::test]
async fn sim_host_command_serves_a_link() {
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_posbridge"))
            .args([
                "sim",
                "host",
                "--dialect",
                "cups-host",
                "--listen",
                "127.0.0.1:0",
                "--decline-above-minor",
                "1000",
                "--seed",
                "7",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("random fault seed 7"), "{line}");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .trim()
        .to_owned();
    let mut config = HostConfig::new("cli", vec![addr], "cups-host");
    config.connections = 1;
    config.mac_key = Some("zak/upstream".into());
    let security = Security::new(Arc::new(SoftwareModule::demo().unwrap()));
    let (link, _unmatched) = HostLink::start(config, security).unwrap();
    assert!(link.wait_signed_on(1, Duration::from_secs(20)).await);
    let approved = link
        .request(sale(500), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(approved.response_code(), Some("00"));
    let declined = link
        .request(sale(5000), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(declined.response_code(), Some("61"));
    link.shutdown().await;
}

#[tokio::test]
async fn sim_host_reads_accounts_rules_and_faults_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(
        &path,
        r#"
dialect = "cups-host"
[[accounts]]
pan = "6222021234567890123"
balance_minor = 1000
pin = "1234"
[[decline]]
amount_suffix = "77"
code = "05"
[[faults]]
amount_suffix = "91"
fault = "duplicate-response"
"#,
    )
    .unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_posbridge"))
            .args(["sim", "host", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let mut config = HostConfig::new("cli", vec![addr], "cups-host");
    config.connections = 1;
    config.mac_key = Some("zak/upstream".into());
    let security = Security::new(Arc::new(SoftwareModule::demo().unwrap()));
    let (link, mut unmatched) = HostLink::start(config, security).unwrap();
    let long = Duration::from_secs(20);
    assert!(link.wait_signed_on(1, long).await);
    let answer = |amount| link.request(sale(amount), long);
    assert_eq!(answer(177).await.unwrap().response_code(), Some("05"));
    assert_eq!(answer(2000).await.unwrap().response_code(), Some("51"));
    assert_eq!(answer(191).await.unwrap().response_code(), Some("00"));
    let copy = tokio::time::timeout(long, unmatched.recv()).await.unwrap();
    assert_eq!(copy.unwrap().message.unwrap().response_code(), Some("00"));
    link.shutdown().await;
}
