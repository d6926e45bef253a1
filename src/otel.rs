//! OpenTelemetry traces over OTLP/HTTP (cargo feature `otel`, `log.otlp_endpoint`): one span
//! per request on the public listener, a child of the caller's W3C `traceparent` when there is
//! one, with the resource attributes `service.name`, `service.version`, `process.pid` and
//! `baton.generation`.
//!
//! Spans are batched on the exporter's own thread; [`Otel::flush`] exports what is left and is
//! called after the drain, before the process exits, so no span of a replaced generation is
//! lost. The spans follow `log.filter` like every other event (they are at info level on the
//! `baton::request` target).

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether this process exports spans: the request path creates none otherwise.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The exporter of this process.
#[derive(Debug, Clone)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// The exporter to `endpoint` (`http://host:4318`; spans go to `/v1/traces` under it), and
    /// the tracing layer that feeds it.
    pub fn start<S>(
        endpoint: &str,
        generation: u64,
    ) -> Result<(Otel, impl tracing_subscriber::Layer<S>), String>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .map_err(|err| err.to_string())?;
        let resource = Resource::builder()
            .with_service_name("baton")
            .with_attributes([
                KeyValue::new("service.version", crate::version()),
                KeyValue::new("process.pid", i64::from(std::process::id())),
                KeyValue::new(
                    "baton.generation",
                    i64::try_from(generation).unwrap_or(i64::MAX),
                ),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("baton"));
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Otel { provider }, layer))
    }

    /// Exports every span still buffered and stops the exporter.
    pub fn flush(&self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(error = %err, "could not export the last spans");
        }
        let _ = self.provider.shutdown();
    }
}

/// The span of one request (disabled when this process exports none), a child of the
/// caller's trace when the request carries a `traceparent`.
pub(crate) fn request_span(method: &str, route: &str, headers: &HeaderMap) -> Span {
    if !ENABLED.load(Ordering::Relaxed) {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "baton::request",
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    // An absent or malformed `traceparent` starts a new trace, as the W3C spec says.
    let _ = span.set_parent(parent);
    span
}

pub(crate) fn record_status(span: &Span, status: StatusCode) {
    span.record("http.response.status_code", status.as_u16());
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
