//! What the AWS exporters share (feature `aws`): one way to configure the
//! SDK clients, one way to describe a failed call, and the fix that lets the
//! SDKs that put a host prefix on their calls (SiteWise's `data.`/`api.`)
//! reach a local endpoint.

use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Time to open a connection to the endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one call may take, start to end.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared SDK configuration from the standard AWS chain (region,
/// credentials, `AWS_ENDPOINT_URL[_<SERVICE>]`), with the SDK's own retries
/// off (the exporter runtime retries, and records every failure) and
/// bounded connect and call times.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    if config.region().is_none() {
        tracing::warn!(
            "no AWS region is configured (AWS_REGION): every export will fail until one is"
        );
    }
    config
}

/// "`what` failed: Code: message", or the whole error chain when the
/// service did not answer (connection refused, timeout…).
pub fn describe_call_error<E>(what: &str, e: &E) -> String
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match e.code() {
        Some(code) => format!(
            "{what} failed: {code}: {}",
            e.message().unwrap_or("no message")
        ),
        None => format!("{what} failed: {}", DisplayErrorContext(e)),
    }
}

/// Per-entry error codes (SiteWise, IoT Analytics) that say the entry itself
/// can never be accepted as sent: the entry is skipped and recorded. Every
/// other code, known or not (throttling, unavailability, internal failure,
/// limits, access denied: a policy can be fixed without touching the data),
/// is sent again.
pub fn is_permanent_entry_code(code: &str) -> bool {
    matches!(
        code,
        "InvalidRequestException"
            | "ResourceNotFoundException"
            | "TimestampOutOfRangeException"
            | "ConflictingOperationException"
    )
}

/// Removes a host prefix the SDK model adds (`data.`, `api.`) when the
/// endpoint is a local address, where `data.127.0.0.1` cannot resolve.
/// Real AWS host names are left alone.
#[derive(Debug)]
pub struct LocalEndpointHostPrefix;

fn strip_prefix(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    for prefix in ["data.", "api."] {
        if let Some(after) = rest.strip_prefix(prefix) {
            let host = after
                .split(['/', '?'])
                .next()
                .unwrap_or("")
                .rsplit_once(':')
                .map_or(after.split(['/', '?']).next().unwrap_or(""), |(h, _)| h);
            let local = host == "localhost"
                || host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok();
            if local {
                return Some(format!("{scheme}://{after}"));
            }
        }
    }
    None
}

impl Intercept for LocalEndpointHostPrefix {
    fn name(&self) -> &'static str {
        "LocalEndpointHostPrefix"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        if let Some(uri) = strip_prefix(request.uri()) {
            request.set_uri(uri)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_hosts_lose_their_prefix() {
        assert_eq!(
            strip_prefix("http://data.127.0.0.1:4000/properties").as_deref(),
            Some("http://127.0.0.1:4000/properties")
        );
        assert_eq!(
            strip_prefix("http://api.localhost/assets?x=1").as_deref(),
            Some("http://localhost/assets?x=1")
        );
        assert_eq!(
            strip_prefix("https://data.iotsitewise.us-east-1.amazonaws.com/properties"),
            None
        );
        assert_eq!(strip_prefix("http://127.0.0.1:4000/properties"), None);
    }

    #[test]
    fn only_known_permanent_codes_skip_an_entry() {
        assert!(is_permanent_entry_code("TimestampOutOfRangeException"));
        assert!(is_permanent_entry_code("ResourceNotFoundException"));
        assert!(!is_permanent_entry_code("ThrottlingException"));
        assert!(!is_permanent_entry_code("AccessDeniedException"));
        assert!(!is_permanent_entry_code("SomethingNewException"));
    }
}
