//! Kafka client configuration from flags and environment variables.
//!
//! Every flag has an environment variable of the same name (`--brokers` / `KAFKA_BROKERS`).
//! Passwords are accepted from flags or the environment but never printed: `--help` hides their
//! values and the `Debug` form redacts them.

use std::fmt;

use rdkafka::ClientConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// Where Kafka is and how to authenticate.
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(
        long = "brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Security protocol of the brokers' listener.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_enum, default_value_t = SecurityProtocol::Plaintext)]
    pub kafka_security_protocol: SecurityProtocol,
    /// SASL mechanism (with a sasl_* protocol).
    #[arg(long, env = "KAFKA_SASL_MECHANISM", default_value = "SCRAM-SHA-512")]
    pub kafka_sasl_mechanism: String,
    /// SASL user name.
    #[arg(long, env = "KAFKA_USERNAME")]
    pub kafka_username: Option<String>,
    /// SASL password; prefer the environment variable over the flag, which other users can see
    /// in the process list.
    #[arg(long, env = "KAFKA_PASSWORD", hide_env_values = true)]
    pub kafka_password: Option<String>,
    /// CA certificate (PEM) to verify the brokers with (ssl / sasl_ssl).
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub kafka_ssl_certificate_location: Option<String>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION")]
    pub kafka_ssl_key_location: Option<String>,
    /// Extra librdkafka settings as key=value, repeatable (e.g. --kafka-option socket.timeout.ms=5000).
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

/// Keys whose values must never be shown.
fn is_secret(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem")
}

impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: Vec<_> = self
            .kafka_options
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.kafka_security_protocol)
            .field("sasl_mechanism", &self.kafka_sasl_mechanism)
            .field("username", &self.kafka_username)
            .field(
                "password",
                &self.kafka_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ssl_ca_location", &self.kafka_ssl_ca_location)
            .field("options", &options)
            .finish()
    }
}

/// A configuration mistake a user can fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--kafka-security-protocol {0} needs --kafka-username and KAFKA_PASSWORD")]
    MissingCredentials(&'static str),
}

impl KafkaArgs {
    /// Plaintext to the given brokers, no credentials.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        KafkaArgs {
            brokers: brokers.into(),
            kafka_security_protocol: SecurityProtocol::Plaintext,
            kafka_sasl_mechanism: "SCRAM-SHA-512".into(),
            kafka_username: None,
            kafka_password: None,
            kafka_ssl_ca_location: None,
            kafka_ssl_certificate_location: None,
            kafka_ssl_key_location: None,
            kafka_options: Vec::new(),
        }
    }

    /// Settings every client shares: brokers, security, the user's extra options.
    pub fn base(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        let proto = self.kafka_security_protocol;
        c.set("security.protocol", proto.as_str());
        if proto.uses_sasl() {
            let (Some(user), Some(pass)) = (&self.kafka_username, &self.kafka_password) else {
                return Err(ConfigError::MissingCredentials(proto.as_str()));
            };
            c.set("sasl.mechanism", &self.kafka_sasl_mechanism);
            c.set("sasl.username", user);
            c.set("sasl.password", pass);
        }
        for (key, value) in [
            ("ssl.ca.location", &self.kafka_ssl_ca_location),
            (
                "ssl.certificate.location",
                &self.kafka_ssl_certificate_location,
            ),
            ("ssl.key.location", &self.kafka_ssl_key_location),
        ] {
            if let Some(v) = value {
                c.set(key, v);
            }
        }
        // librdkafka logs through the `log` facade only with a logger; keep its own log quiet
        // unless asked, errors reach us through callbacks and results.
        c.set("log_level", "3");
        for (k, v) in &self.kafka_options {
            c.set(k, v);
        }
        Ok(c)
    }

    /// A producer tuned for throughput with no loss and no duplicates from retries: idempotent,
    /// `acks=all`, lz4, 5 ms linger, 1 MiB batches.
    pub fn producer(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = self.base()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("batch.size", "1048576")
            .set("queue.buffering.max.kbytes", "262144")
            .set("message.timeout.ms", "120000");
        self.reapply_options(&mut c);
        Ok(c)
    }

    /// A consumer in `group` that commits explicitly and reads only committed transactional data.
    pub fn consumer(&self, group: &str) -> Result<ClientConfig, ConfigError> {
        let mut c = self.base()?;
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // Eager: with static membership (processors' --instance-id) a restarted member gets its
            // partitions back at once; librdkafka's cooperative protocol left it unassigned.
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "10000");
        self.reapply_options(&mut c);
        Ok(c)
    }

    /// Fails with a clear message unless the brokers answer and accept our credentials.
    pub fn check(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        crate::context::check_connection(&self.base()?, timeout)
    }

    /// An admin client.
    pub fn admin(&self) -> Result<ClientConfig, ConfigError> {
        self.base()
    }

    /// User options win over our defaults.
    fn reapply_options(&self, c: &mut ClientConfig) {
        for (k, v) in &self.kafka_options {
            c.set(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> KafkaArgs {
        let mut a = KafkaArgs::plaintext("b:9094");
        a.kafka_security_protocol = SecurityProtocol::SaslPlaintext;
        a.kafka_username = Some("app".into());
        a.kafka_password = Some("s3cret-pw".into());
        a.kafka_options = vec![(
            "sasl.oauthbearer.client.secret".into(),
            "other-secret".into(),
        )];
        a
    }

    #[test]
    fn sasl_settings_are_applied() {
        let c = args().producer().unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("app"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?}", args());
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(!shown.contains("other-secret"), "{shown}");
        assert!(shown.contains("b:9094"));
    }

    #[test]
    fn sasl_without_credentials_is_a_clear_error() {
        let mut a = args();
        a.kafka_password = None;
        let e = a.base().unwrap_err().to_string();
        assert!(e.contains("KAFKA_PASSWORD"), "{e}");
    }

    #[test]
    fn user_options_override_defaults() {
        let mut a = KafkaArgs::plaintext("b:1");
        a.kafka_options = vec![("linger.ms".into(), "50".into())];
        assert_eq!(a.producer().unwrap().get("linger.ms"), Some("50"));
        assert!(parse_key_value("novalue").is_err());
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
    }
}
