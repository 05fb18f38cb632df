//! Sending one e-mail over SMTP (lettre), as configured in `[smtp]`.

use super::config::{SmtpConfig, SmtpTls};
use crate::config::error::ConfigError;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;
use thiserror::Error;

/// A message could not be sent. The text names the relay's answer, never a password.
#[derive(Debug, Error)]
pub enum MailError {
    #[error("invalid recipient address: {0}")]
    Recipient(String),
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// An SMTP relay and the sender address.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// Builds the transport (no connection yet) and loads the password.
    pub fn new(config: &SmtpConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let tls_error = |e: lettre::transport::smtp::Error| ConfigError::Invalid {
            field: "smtp.tls",
            problem: format!("cannot set up TLS for {}: {e}", config.host),
        };
        let builder = match config.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(tls_error)?,
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host).map_err(tls_error)?
            }
        };
        let mut builder = builder
            .port(config.port())
            .timeout(Some(Duration::from_secs(config.timeout_secs)));
        if let (Some(user), Some(password)) = (&config.username, config.password()?) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let transport: AsyncSmtpTransport<Tokio1Executor> = builder.build();
        let from = config.from.parse().map_err(|_| ConfigError::Invalid {
            field: "smtp.from",
            problem: "is not an address".into(),
        })?;
        Ok(Self { transport, from })
    }

    /// Sends a plain-text message to `to`.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|_| MailError::Recipient(to.to_owned()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)?;
        self.transport.send(message).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tls_mode_builds_a_transport() {
        for tls in ["none", "starttls", "tls"] {
            let config: SmtpConfig = toml::from_str(&format!(
                "host = \"smtp.example.org\"\ntls = \"{tls}\"\nfrom = \"c@example.org\"\n"
            ))
            .unwrap();
            assert!(Mailer::new(&config).is_ok(), "{tls}");
        }
    }
}
