//! The gateway's security posture, checked at every start: in production mode the gateway
//! refuses to run on anything unsafe, naming the configuration key; in development mode it runs
//! and says, loudly, what would be refused.

use crate::infra::config::{Config, Mode};
use posbridge_hsm::{Capabilities, KeyInfo, PinTranslation};

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Posture {
    /// The configured mode.
    pub mode: Mode,
    /// Every unsafe setting found, each naming its key; empty when production-ready.
    pub findings: Vec<String>,
    /// PIN blocks pass through host memory and the operator accepted it
    /// (`gateway.allow_pin_in_host_memory`).
    pub pin_in_host_memory_allowed: bool,
}

impl Posture {
    /// True when nothing unsafe was found.
    pub fn production_ready(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks a configuration against the security module it opened and the module's keys.
/// `demo_check_values` are the published demo keys' (posbridge_hsm::demo_check_values).
pub fn assess(
    config: &Config,
    capabilities: &Capabilities,
    keys: &[KeyInfo],
    demo_check_values: &[Vec<u8>],
) -> Posture {
    let mut findings = Vec::new();
    if capabilities.backend == "software" {
        findings.push(
            "hsm.backend: the software module keeps keys in this process's memory; use pkcs11 or \
             payshield"
                .to_owned(),
        );
    }
    for key in keys.iter().filter(|k| demo_check_values.contains(&k.kcv)) {
        findings.push(format!(
            "hsm: key {} is a published demo key (check value {})",
            key.label,
            hex::encode_upper(&key.kcv)
        ));
    }
    let wallet = &config.wallet_api;
    if wallet.tls_cert.is_none() && !wallet.listen.ip().is_loopback() {
        findings.push(format!(
            "wallet_api.tls_cert: plain HTTP on the non-loopback address {}",
            wallet.listen
        ));
    }
    for (index, host) in config.hosts.iter().enumerate() {
        if host.mac_key.is_none() {
            findings.push(format!(
                "hosts[{index}].mac_key: host {} has no MAC key; financial traffic must be MACed",
                host.name
            ));
        }
    }
    if crate::infra::failpoint::any_armed() {
        findings.push(format!(
            "{}: failpoints are armed (fault tests only)",
            crate::infra::failpoint::ENV
        ));
    }
    let pin_in_host = capabilities.pin_translation == PinTranslation::HostMemory;
    let allowed = config.gateway.allow_pin_in_host_memory;
    if pin_in_host && !allowed {
        findings.push(
            "gateway.allow_pin_in_host_memory: this security module decrypts PIN blocks in host \
             memory; set it to true to accept that (not PCI PIN compliant)"
                .to_owned(),
        );
    }
    Posture {
        mode: config.gateway.mode,
        findings,
        pin_in_host_memory_allowed: pin_in_host && allowed,
    }
}

/// Refuses to start in production mode on any finding; in development mode logs them all.
pub fn enforce(posture: &Posture) -> anyhow::Result<()> {
    match posture.mode {
        Mode::Production if !posture.production_ready() => anyhow::bail!(
            "production mode refuses this configuration: {}",
            posture.findings.join("; ")
        ),
        Mode::Production => {
            if posture.pin_in_host_memory_allowed {
                tracing::warn!(
                    "PRODUCTION with gateway.allow_pin_in_host_memory = true: PIN blocks are \
                     decrypted in host memory by this security module"
                );
            }
            Ok(())
        }
        Mode::Development => {
            tracing::warn!(
                findings = posture.findings.len(),
                "DEVELOPMENT MODE: not for real payments; production mode would refuse: {}",
                if posture.findings.is_empty() {
                    "nothing".to_owned()
                } else {
                    posture.findings.join("; ")
                }
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use posbridge_hsm::{KeyTransport, KeyType};

    fn module(backend: &str, pin: PinTranslation) -> Capabilities {
        Capabilities {
            backend: backend.to_owned(),
            description: String::new(),
            production: backend != "software",
            pin_translation: pin,
            key_transport: KeyTransport::InToken,
            notes: Vec::new(),
        }
    }

    fn production() -> Config {
        let mut config = Config::default();
        config.gateway.mode = Mode::Production;
        config
    }

    fn key(label: &str, kcv: &[u8]) -> KeyInfo {
        KeyInfo {
            label: label.to_owned(),
            key_type: KeyType::Tdes2,
            kcv: kcv.to_vec(),
            class: None,
            usages: posbridge_hsm::Usages::NONE,
        }
    }

    #[test]
    fn a_safe_configuration_passes() {
        let posture = assess(
            &production(),
            &module("hsm", PinTranslation::InToken),
            &[],
            &[],
        );
        assert!(posture.production_ready(), "{:?}", posture.findings);
        assert!(enforce(&posture).is_ok());
    }

    #[test]
    fn production_refuses_each_unsafe_setting_naming_its_key() {
        let refused = |config: &Config, caps: &Capabilities, keys: &[KeyInfo], key: &str| {
            let posture = assess(config, caps, keys, &[vec![0xAB, 0xCD, 0xEF]]);
            let error = enforce(&posture).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        };
        let safe = module("hsm", PinTranslation::InToken);
        refused(
            &production(),
            &module("software", PinTranslation::InToken),
            &[],
            "hsm.backend",
        );
        refused(
            &production(),
            &safe,
            &[key("zpk/x", &[0xAB, 0xCD, 0xEF])],
            "published demo key",
        );
        let mut open_http = production();
        open_http.wallet_api.listen = "0.0.0.0:8080".parse().unwrap();
        refused(&open_http, &safe, &[], "wallet_api.tls_cert");
        let mut unmaced = production();
        unmaced
            .hosts
            .push(crate::infra::config::host::HostConfig::new(
                "cups",
                vec!["127.0.0.1:1".into()],
                "cups-host",
            ));
        refused(&unmaced, &safe, &[], "hosts[0].mac_key");
        let pin_in_host = module("pkcs11", PinTranslation::HostMemory);
        refused(
            &production(),
            &pin_in_host,
            &[],
            "gateway.allow_pin_in_host_memory",
        );
        let mut allowed = production();
        allowed.gateway.allow_pin_in_host_memory = true;
        let posture = assess(&allowed, &pin_in_host, &[], &[]);
        assert!(posture.production_ready() && posture.pin_in_host_memory_allowed);
    }

    #[test]
    fn development_runs_on_anything_and_says_so() {
        let posture = assess(
            &Config::default(),
            &module("software", PinTranslation::HostMemory),
            &[],
            &[],
        );
        assert!(!posture.production_ready());
        assert!(enforce(&posture).is_ok());
    }
}
