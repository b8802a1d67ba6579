//! What the AWS backends (S3, DynamoDB) share: client settings and how a request that got no
//! answer is classified.

use aws_smithy_runtime_api::client::result::SdkError;

/// Endpoint, region and credentials; anything unset comes from the standard AWS configuration
/// (environment, profile, instance role).
#[derive(Clone, Default)]
pub(crate) struct AwsSettings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret key: settings end up in logs.
        f.debug_struct("AwsSettings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(id, _)| id),
            )
            .finish_non_exhaustive()
    }
}

impl AwsSettings {
    /// The SDK configuration these settings describe.
    pub async fn load(&self) -> aws_config::SdkConfig {
        use aws_credential_types::Credentials;
        // Every request is bounded here too (the runtime also bounds each call by its deadline).
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .operation_attempt_timeout(std::time::Duration::from_secs(10))
            .operation_timeout(std::time::Duration::from_secs(30))
            .build();
        // The SDK retries a few times with short delays; dlock's own retries, bounded by each
        // lock's deadlines, take over from there (the SDK's default backoff outlives short
        // leases).
        let retries = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(std::time::Duration::from_millis(20))
            .with_max_backoff(std::time::Duration::from_millis(500));
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((id, secret)) = &self.credentials {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "dlock"));
        }
        loader.load().await
    }

    /// ` at ENDPOINT` for messages, when an endpoint was configured.
    pub fn at(&self) -> String {
        self.endpoint
            .as_deref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default()
    }
}

/// Whether a request failed without an answer from the service (connection refused or closed,
/// timeout): worth retrying, unlike a configuration error found before sending.
pub(crate) fn unreachable<E, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        // Anything but a user (configuration) error while dispatching: I/O, a timeout, or a
        // connection closed before the answer came.
        SdkError::DispatchFailure(d) => !d.is_user(),
        _ => false,
    }
}

/// The setters every AWS backend's builder has, over its `aws: AwsSettings` field.
macro_rules! aws_setters {
    () => {
        /// A custom endpoint (a local stand-in, ...); also read from `AWS_ENDPOINT_URL`.
        pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
            self.aws.endpoint = Some(endpoint.into());
            self
        }

        /// The region; otherwise from `AWS_REGION` or the profile.
        pub fn region(mut self, region: impl Into<String>) -> Self {
            self.aws.region = Some(region.into());
            self
        }

        /// Static credentials; otherwise the standard AWS credential chain.
        pub fn credentials(
            mut self,
            access_key_id: impl Into<String>,
            secret_access_key: impl Into<String>,
        ) -> Self {
            self.aws.credentials = Some((access_key_id.into(), secret_access_key.into()));
            self
        }
    };
}
pub(crate) use aws_setters;
