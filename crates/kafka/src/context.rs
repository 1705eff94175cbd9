//! A librdkafka client context that remembers what went wrong.
//!
//! librdkafka reports broker-level failures (authentication refused, all brokers down) through
//! an error callback, while the call that failed only says "transport failure". This context
//! keeps the last such error so that what a user sees names the real cause, e.g. "SASL
//! authentication failed: invalid credentials".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

#[derive(Default)]
pub struct ErrorContext {
    last_error: Mutex<Option<String>>,
    auth_error: Mutex<Option<String>>,
    auth_failed: AtomicBool,
}

impl ErrorContext {
    /// The last client-level error librdkafka reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why the brokers refused our credentials, if they did.
    pub fn auth_error(&self) -> Option<String> {
        self.auth_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the brokers refused our credentials: retrying will not help.
    pub fn auth_failed(&self) -> bool {
        self.auth_failed.load(Ordering::Acquire)
    }

    /// `err` explained with the recorded cause.
    pub fn explain(&self, err: impl std::fmt::Display) -> anyhow::Error {
        match self.last_error() {
            Some(cause) => anyhow::anyhow!("{err} (cause: {cause})"),
            None => anyhow::anyhow!("{err}"),
        }
    }
}

impl ErrorContext {
    /// Records an error found outside librdkafka's callbacks.
    pub fn record_error(&self, reason: &str) {
        self.record(reason)
    }

    fn record(&self, reason: &str) {
        let lower = reason.to_ascii_lowercase();
        if lower.contains("authentication") || lower.contains("sasl") && lower.contains("fail") {
            self.auth_failed.store(true, Ordering::Release);
            // Kept apart: "all brokers down" follows a refused login and would hide it.
            *self.auth_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }
}

impl ClientContext for ErrorContext {
    /// Error events; only delivered where the client is polled (consumers, producers).
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            self.auth_failed.store(true, Ordering::Release);
            *self.auth_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
        tracing::warn!(error = %error, reason, "kafka client error");
        self.record(reason);
    }

    /// librdkafka's own log lines, called from its threads: every client, polled or not, logs a
    /// refused login here ("SASL authentication error: ...").
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}");
                self.record(message);
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }
}

impl rdkafka::producer::ProducerContext for ErrorContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

impl rdkafka::consumer::ConsumerContext for ErrorContext {}

/// Connects with `config` and reads cluster metadata, failing fast with the real cause: refused
/// credentials end at once with librdkafka's explanation instead of a timeout. Services call this
/// at start so a misconfiguration is a clear error and a non-zero exit.
pub fn check_connection(
    config: &rdkafka::ClientConfig,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseProducer, Producer};
    let producer: BaseProducer<ErrorContext> =
        config.create_with_context(ErrorContext::default())?;
    let deadline = std::time::Instant::now() + timeout;
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_string();
    loop {
        match producer
            .client()
            .fetch_metadata(None, std::time::Duration::from_millis(500))
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                // Serves the error callbacks that carry the cause.
                producer.poll(std::time::Duration::from_millis(100));
                let ctx = producer.context();
                if ctx.auth_failed() {
                    anyhow::bail!(
                        "Kafka at {brokers} refused our credentials: {}",
                        ctx.auth_error().unwrap_or_else(|| e.to_string())
                    );
                }
                if std::time::Instant::now() >= deadline {
                    return Err(ctx.explain(format!(
                        "cannot reach Kafka at {brokers} within {timeout:?}: {e}"
                    )));
                }
            }
        }
    }
}
