//! Logging through `tracing`: to the journal when systemd runs us (`$JOURNAL_STREAM`), to stderr
//! in human-readable form otherwise. The filter comes from `$SKOG_LOG`, else the configuration's
//! `log_level`, else `info`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter does not parse.
    #[error("bad log filter {filter:?}: {reason}")]
    Filter {
        /// The filter text.
        filter: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging already initialised: {0}")]
    Init(String),
}

/// Installs the global subscriber.
pub fn init(config_level: Option<&str>) -> Result<(), LoggingError> {
    let filter = std::env::var("SKOG_LOG")
        .ok()
        .or_else(|| config_level.map(str::to_owned))
        .unwrap_or_else(|| "info".into());
    let env_filter = EnvFilter::try_new(&filter).map_err(|e| LoggingError::Filter {
        filter: filter.clone(),
        reason: e.to_string(),
    })?;
    let registry = tracing_subscriber::registry().with(env_filter);
    let journal = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    match journal {
        Some(layer) => registry
            .with(layer.with_syslog_identifier("skogd".into()))
            .try_init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    }
    .map_err(|e| LoggingError::Init(e.to_string()))
}
