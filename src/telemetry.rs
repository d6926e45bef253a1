//! Tracing set-up: one global subscriber writing to stderr, as text or as JSON lines, with a
//! log filter that a config reload can replace while the process runs.
//!
//! The filter comes from `log.filter` only, not `RUST_LOG`: like every setting it can be
//! overridden with `BATON_LOG__FILTER`, and `baton check` shows the one that will be in force.
//! The format is chosen once per process (`log.format` is upgrade-only): swapping the output
//! format under running spans would mix two formats in one stream.
//!
//! Warnings and errors go through [`LogLimit`], so that a client cannot amplify the log.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::log_limit::LogLimit;
use crate::settings::{Log, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "invalid log filter {filter:?}: {reason}; expected directives like \"info,baton=debug\""
    )]
    InvalidFilter { filter: String, reason: String },

    #[error("logging is already set up in this process ({0}); call telemetry::init once")]
    AlreadyInitialized(String),

    #[error("cannot change the log filter: {0}")]
    Reload(String),

    #[error(
        "log.otlp_endpoint is set, but this build has no OpenTelemetry support; rebuild with \
         `cargo build --release --features otel`, or remove log.otlp_endpoint"
    )]
    OtelNotBuilt,

    #[error("cannot export traces to log.otlp_endpoint {endpoint:?}: {reason}")]
    Otlp { endpoint: String, reason: String },
}

/// The handle that changes the log filter of the installed subscriber, and the trace exporter
/// when there is one.
#[derive(Clone, Debug)]
pub struct Telemetry {
    filter: reload::Handle<EnvFilter, Registry>,
    limit: LogLimit,
    #[cfg(feature = "otel")]
    otel: Option<crate::otel::Otel>,
}

impl Telemetry {
    /// Replaces the log filter, e.g. after a config reload. An invalid filter changes nothing.
    pub fn set_filter(&self, filter: &str) -> Result<(), TelemetryError> {
        let filter = parse_filter(filter)?;
        self.filter
            .reload(filter)
            .map_err(|err| TelemetryError::Reload(err.to_string()))
    }

    /// Writes what the log limit suppressed, every few seconds; run it on the runtime.
    pub fn report_suppressed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.limit.clone().report()
    }

    /// Exports the spans still buffered (`log.otlp_endpoint`); called once the drain is over,
    /// before the process exits. Nothing to do without an exporter.
    pub fn flush(&self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            otel.flush();
        }
    }
}

/// Installs the global subscriber: logs go to stderr, filtered by `log.filter`, in
/// `log.format`, and spans to `log.otlp_endpoint` when set (feature `otel`), with the binary
/// `generation` among their attributes. Fails, without panicking, when a global subscriber is
/// already installed.
pub fn init(log: &Log, generation: u64) -> Result<Telemetry, TelemetryError> {
    // Colours only for a person at a terminal; journald and log collectors want plain text.
    let ansi = std::io::stderr().is_terminal();
    let (subscriber, telemetry) = build(log, std::io::stderr, ansi, generation)?;
    subscriber
        .try_init()
        .map_err(|err| TelemetryError::AlreadyInitialized(err.to_string()))?;
    Ok(telemetry)
}

/// The subscriber `init` installs, writing to `writer`; separate so tests can run it locally.
fn build<W>(
    log: &Log,
    writer: W,
    ansi: bool,
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))] generation: u64,
) -> Result<(impl Subscriber + Send + Sync + 'static, Telemetry), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(parse_filter(&log.filter)?);
    let limit = LogLimit::default();
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(limit.clone())
        .with(fmt_layer(log.format, writer, ansi));
    #[cfg(not(feature = "otel"))]
    {
        if !log.otlp_endpoint.is_empty() {
            return Err(TelemetryError::OtelNotBuilt);
        }
        Ok((
            subscriber,
            Telemetry {
                filter: handle,
                limit,
            },
        ))
    }
    #[cfg(feature = "otel")]
    {
        let (otel, layer) = match log.otlp_endpoint.as_str() {
            "" => (None, None),
            endpoint => {
                let (otel, layer) =
                    crate::otel::Otel::start(endpoint, generation).map_err(|reason| {
                        TelemetryError::Otlp {
                            endpoint: endpoint.to_owned(),
                            reason,
                        }
                    })?;
                (Some(otel), Some(layer))
            }
        };
        let telemetry = Telemetry {
            filter: handle,
            limit,
            otel,
        };
        Ok((subscriber.with(layer), telemetry))
    }
}

fn fmt_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Text => fmt::layer().with_writer(writer).with_ansi(ansi).boxed(),
        // One JSON object per line with the event's fields at the top level, which is what
        // log collectors (Loki, Elasticsearch, CloudWatch) index without extra parsing.
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::try_new(filter).map_err(|err| TelemetryError::InvalidFilter {
        filter: filter.to_owned(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("buffer lock").clone();
            String::from_utf8(bytes)
                .expect("log output is UTF-8")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn log(filter: &str, format: LogFormat) -> Log {
        Log {
            filter: filter.to_owned(),
            format,
            access: false,
            otlp_endpoint: String::new(),
        }
    }

    #[test]
    fn json_is_one_flat_object_per_line() {
        let buffer = Buffer::default();
        let (subscriber, _telemetry) =
            build(&log("info", LogFormat::Json), buffer.clone(), false, 1).expect("valid filter");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "first");
            tracing::warn!(path = "/x", "second");
        });
        let lines = buffer.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("line is JSON");
        assert_eq!(first["message"], "first");
        assert_eq!(first["answer"], 42);
        assert_eq!(first["level"], "INFO");
        assert!(
            first.get("fields").is_none(),
            "fields are flattened: {first}"
        );
    }

    #[test]
    fn set_filter_changes_what_is_written_and_rejects_garbage() {
        let buffer = Buffer::default();
        let (subscriber, telemetry) =
            build(&log("warn", LogFormat::Text), buffer.clone(), false, 1).expect("valid filter");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("hidden");
            telemetry.set_filter("info").expect("valid filter");
            tracing::info!("shown");
            let err = telemetry
                .set_filter("info,[")
                .expect_err("an invalid filter is refused");
            assert!(
                err.to_string().contains("invalid log filter \"info,[\""),
                "{err}"
            );
            tracing::info!("still shown");
        });
        let text = buffer.lines().join("\n");
        assert!(!text.contains("hidden"), "{text}");
        assert!(text.contains("shown"), "{text}");
        assert!(text.contains("still shown"), "{text}");
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn an_otlp_endpoint_without_the_otel_feature_is_an_error_that_says_how_to_build() {
        let mut settings = log("info", LogFormat::Text);
        settings.otlp_endpoint = "http://127.0.0.1:4318".to_owned();
        let err = build(&settings, Buffer::default(), false, 1)
            .err()
            .expect("refused");
        assert!(matches!(err, TelemetryError::OtelNotBuilt), "{err}");
        assert!(err.to_string().contains("--features otel"), "{err}");
    }

    #[test]
    fn invalid_initial_filter_is_an_error() {
        let err = build(&log("=", LogFormat::Text), Buffer::default(), false, 1)
            .err()
            .expect("an invalid filter is refused");
        assert!(matches!(err, TelemetryError::InvalidFilter { .. }), "{err}");
    }
}
