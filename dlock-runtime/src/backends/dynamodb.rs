//! Amazon DynamoDB: one item per lock name, written with conditional `UpdateItem`s.
//!
//! Acquire is one request: it succeeds when the item is absent, released (no owner), or — for
//! a takeover — still at the version the waiter saw unchanged for a whole lease; the same
//! update `ADD`s 1 to a fencing counter kept in the item, so tokens keep increasing across
//! release, re-acquire and takeover. A refused write returns the item as it is
//! (`ReturnValuesOnConditionCheckFailure=ALL_OLD`), which names the holder without a second
//! read and resolves an SDK retry of a write that had succeeded. Release removes the holder's
//! attributes, keeping the counter. The lock never scans and never reads except to show a
//! holder (`inspect`).

use super::aws::AwsSettings;
use super::protocol::{Condition, ConditionalStore, Write};
use crate::backend::{Capabilities, Holder, Lease, Owner, Version};
use crate::time::{from_unix_millis, unix_millis};
use crate::{Error, LockName};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use tokio::sync::OnceCell;

const KIND: &str = "dynamodb";
/// The key attribute of dynamo-dlm's tables, so existing tables work as they are.
pub(crate) const DEFAULT_KEY_ATTRIBUTE: &str = "resource_id";

// Attribute names, always through ExpressionAttributeNames (some are reserved words).
const OWNER: &str = "owner";
const HOST: &str = "host";
const PID: &str = "pid";
const ACQUIRED_AT: &str = "acquired_at_ms";
const TTL: &str = "ttl_ms";
const VERSION: &str = "record_version";
const FENCE: &str = "fencing_token";

/// Locks as items of a DynamoDB table (key: a String attribute, `resource_id` by default, no
/// sort key).
///
/// IAM actions needed on the table: `dynamodb:UpdateItem` and `dynamodb:GetItem`
/// (`dynamodb:CreateTable` and `dynamodb:DescribeTable` only for [`create_table`](Self::create_table)).
///
/// ```no_run
/// use dlock_runtime::{DynamoDbBackend, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock_runtime::Error> {
/// let dynamo = DynamoDbBackend::builder()
///     .table("dlock_locks")
///     .endpoint("http://127.0.0.1:8000") // a local stand-in; omit for AWS
///     .build()?;
/// dynamo.create_table().await?; // development only: on-demand, key `resource_id`
/// Registry::builder().backend("dynamodb", dynamo).build()?.install().expect("once");
/// # Ok(())
/// # }
/// ```
pub struct DynamoDbBackend {
    settings: DynamoDbBuilder,
    client: OnceCell<Client>,
}

impl fmt::Debug for DynamoDbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbBackend")
            .field("table", &self.settings.table)
            .field("key_attribute", &self.settings.key_attribute)
            .field("endpoint", &self.settings.aws.endpoint)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`DynamoDbBackend`]; setters never fail, [`build`](DynamoDbBuilder::build)
/// checks.
///
/// ```
/// use dlock_runtime::DynamoDbBackend;
///
/// let backend = DynamoDbBackend::builder().table("dlock_locks").region("eu-west-1").build()?;
/// assert!(DynamoDbBackend::builder().table("no").build().is_err(), "3 to 255 characters");
/// assert!(DynamoDbBackend::builder().table("t!x").build().is_err(), "A-Z a-z 0-9 _ - .");
/// # drop(backend);
/// # Ok::<(), dlock_runtime::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "call .build()"]
pub struct DynamoDbBuilder {
    table: String,
    key_attribute: String,
    aws: AwsSettings,
}

impl Default for DynamoDbBuilder {
    fn default() -> Self {
        DynamoDbBuilder {
            table: String::new(),
            key_attribute: DEFAULT_KEY_ATTRIBUTE.to_string(),
            aws: AwsSettings::default(),
        }
    }
}

impl DynamoDbBuilder {
    /// The table (required).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The table's key attribute (a String; default `resource_id`).
    pub fn key_attribute(mut self, key_attribute: impl Into<String>) -> Self {
        self.key_attribute = key_attribute.into();
        self
    }

    super::aws::aws_setters!();

    /// Checks the settings.
    pub fn build(self) -> Result<DynamoDbBackend, Error> {
        let valid = |s: &str| {
            (3..=255).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        if !valid(&self.table) {
            return Err(Error::Config {
                message: format!(
                    "dynamodb: `{}` is not a table name (3-255 of A-Z a-z 0-9 _ - .); set one with `.table(..)`, \
                     `dynamodb://TABLE` or DLOCK_DYNAMODB_TABLE",
                    self.table
                ),
            });
        }
        if self.key_attribute.is_empty()
            || [OWNER, HOST, PID, ACQUIRED_AT, TTL, VERSION, FENCE]
                .contains(&self.key_attribute.as_str())
        {
            return Err(Error::Config {
                message: format!(
                    "dynamodb: `{}` cannot be the key attribute",
                    self.key_attribute
                ),
            });
        }
        Ok(DynamoDbBackend {
            settings: self,
            client: OnceCell::new(),
        })
    }
}

impl DynamoDbBackend {
    /// Settings to fill in.
    pub fn builder() -> DynamoDbBuilder {
        DynamoDbBuilder::default()
    }

    /// Settings from the environment: table from `DLOCK_DYNAMODB_TABLE`; the AWS variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials) are read by the AWS configuration.
    pub fn from_env() -> DynamoDbBuilder {
        DynamoDbBackend::builder().table(std::env::var("DLOCK_DYNAMODB_TABLE").unwrap_or_default())
    }

    /// `dynamodb://table`, with the rest from the environment.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let table = url
            .strip_prefix("dynamodb://")
            .unwrap_or(url)
            .trim_end_matches('/');
        DynamoDbBackend::from_env().table(table).build()
    }

    /// Creates the table, on demand (pay per request), if it does not exist, and waits until it
    /// is active. For development and tests; production tables belong in infrastructure code.
    pub async fn create_table(&self) -> Result<(), Error> {
        let s = &self.settings;
        let client = self.client().await?;
        let created = client
            .create_table()
            .table_name(&s.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(&s.key_attribute)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| Error::permanent(KIND, format!("table definition: {e}"), None))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(&s.key_attribute)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| Error::permanent(KIND, format!("key schema: {e}"), None))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error().and_then(|s| s.code())
                    == Some("ResourceInUseException") => {}
            Err(e) => return Err(self.error("creating the table", e)),
        }
        for _ in 0..600 {
            let table = client.describe_table().table_name(&s.table).send().await;
            let table = table.map_err(|e| self.error("waiting for the table", e))?;
            if table.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::permanent(
            KIND,
            format!("table `{}` did not become active within a minute", s.table),
            None,
        ))
    }

    async fn client(&self) -> Result<&Client, Error> {
        self.client.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Client, Error> {
        let s = &self.settings;
        Ok(Client::new(&s.aws.load().await))
    }

    /// A conditional `UpdateItem` of `name`'s item that returns the item as it was when the
    /// condition fails (ALL_OLD), to name the holder without a second read.
    fn update_item(
        &self,
        client: &Client,
        name: &LockName,
        e: Expressions,
    ) -> UpdateItemFluentBuilder {
        let (k, v) = self.key(name);
        client
            .update_item()
            .table_name(&self.settings.table)
            .key(k, v)
            .update_expression(e.update)
            .condition_expression(e.condition)
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    fn key(&self, name: &LockName) -> (String, AttributeValue) {
        (
            self.settings.key_attribute.clone(),
            AttributeValue::S(name.to_string()),
        )
    }

    /// Maps an SDK error to dlock's; throttling and server errors are temporary.
    fn error<E>(&self, doing: &str, e: SdkError<E>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let table = &self.settings.table;
        let code = e
            .as_service_error()
            .and_then(|s| s.code())
            .unwrap_or_default()
            .to_string();
        let status = e.raw_response().map(|r| r.status().as_u16());
        let detail = DisplayErrorContext(&e).to_string();
        let unreachable = super::aws::unreachable(&e);
        let (temporary, message) = match (code.as_str(), status) {
            ("ResourceNotFoundException", _) => (
                false,
                format!(
                    "table `{table}` does not exist; create it (key `{key}`, type String, no sort key) with \
                     `DynamoDbBackend::create_table()` for development, or `aws dynamodb create-table --table-name {table} \
                     --attribute-definitions AttributeName={key},AttributeType=S --key-schema AttributeName={key},KeyType=HASH \
                     --billing-mode PAY_PER_REQUEST`",
                    key = self.settings.key_attribute
                ),
            ),
            (
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException",
                _,
            )
            | (_, Some(401 | 403)) => (
                false,
                format!(
                    "access denied to table `{table}` while {doing}; the credentials need dynamodb:UpdateItem and dynamodb:GetItem on it: {detail}"
                ),
            ),
            (
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "TransactionConflictException",
                _,
            )
            | (_, Some(429 | 500..=599)) => (true, format!("{doing}: {detail}")),
            (_, Some(_)) => (false, format!("{doing}: {detail}")),
            (_, None) if unreachable => (
                true,
                format!(
                    "cannot reach DynamoDB{} while {doing}: {detail}; check the endpoint (AWS_ENDPOINT_URL) and the network",
                    self.settings.aws.at()
                ),
            ),
            (_, None) => (
                false,
                format!(
                    "the AWS configuration is incomplete while {doing}: {detail}; set AWS_REGION and credentials"
                ),
            ),
        };
        Error::backend_failure(KIND, temporary, message, Some(Box::new(e)))
    }
}

/// The holder an item names, `None` for a free (absent or released) lock.
fn holder(item: Option<&HashMap<String, AttributeValue>>) -> Option<Holder> {
    let item = item?;
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Holder {
        owner: Owner {
            id: s(OWNER)?,
            host: s(HOST).unwrap_or_default(),
            pid: n(PID)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or_default(),
        },
        version: Version::new(s(VERSION).unwrap_or_default()),
        acquired_at: n(ACQUIRED_AT).map(from_unix_millis),
        ttl: n(TTL).map(Duration::from_millis),
        fencing_token: n(FENCE),
    })
}

fn names(keys: &[&'static str]) -> HashMap<String, String> {
    keys.iter()
        .map(|k| (format!("#{k}"), (*k).to_string()))
        .collect()
}

/// One conditional `UpdateItem`'s expressions and their placeholders.
struct Expressions {
    update: &'static str,
    condition: &'static str,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

/// The expressions of a write. Every name and value sent is used by an expression: DynamoDB
/// rejects unused ones, and moto does not, so this is checked by a unit test instead.
fn write_expressions(lease: &Lease, condition: Condition<'_>, version: &str) -> Expressions {
    let mut values = HashMap::from([
        (
            ":ttl".to_string(),
            AttributeValue::N(crate::time::millis(lease.ttl).to_string()),
        ),
        (
            ":version".to_string(),
            AttributeValue::S(version.to_string()),
        ),
        (
            ":owner".to_string(),
            AttributeValue::S(lease.owner.id.clone()),
        ),
    ]);
    match condition {
        Condition::Free | Condition::Replace(_) => {
            values.extend([
                (
                    ":host".to_string(),
                    AttributeValue::S(lease.owner.host.clone()),
                ),
                (
                    ":pid".to_string(),
                    AttributeValue::N(lease.owner.pid.to_string()),
                ),
                (
                    ":at".to_string(),
                    AttributeValue::N(unix_millis(lease.acquired_at).to_string()),
                ),
                (":one".to_string(), AttributeValue::N("1".into())),
            ]);
            let update = "SET #owner = :owner, #host = :host, #pid = :pid, #acquired_at_ms = :at, \
                          #ttl_ms = :ttl, #record_version = :version ADD #fencing_token :one";
            let condition = match condition {
                Condition::Replace(stale) => {
                    values.insert(":expected".into(), AttributeValue::S(stale.to_string()));
                    "attribute_not_exists(#owner) OR #record_version = :expected"
                }
                _ => "attribute_not_exists(#owner)",
            };
            Expressions {
                update,
                condition,
                names: names(&[OWNER, HOST, PID, ACQUIRED_AT, TTL, VERSION, FENCE]),
                values,
            }
        }
        Condition::Renew(current) => {
            values.insert(":expected".into(), AttributeValue::S(current.to_string()));
            Expressions {
                update: "SET #ttl_ms = :ttl, #record_version = :version",
                condition: "#owner = :owner AND #record_version = :expected",
                names: names(&[OWNER, TTL, VERSION]),
                values,
            }
        }
    }
}

/// Release: remove the holder, keep the key and the fencing counter; conditional on the
/// version (and the owner, for the holder's own release).
fn release_expressions(version: &Version, owner: Option<&Owner>) -> Expressions {
    let mut values = HashMap::from([(
        ":expected".to_string(),
        AttributeValue::S(version.to_string()),
    )]);
    let condition = match owner {
        Some(owner) => {
            values.insert(":owner".to_string(), AttributeValue::S(owner.id.clone()));
            "#owner = :owner AND #record_version = :expected"
        }
        None => "attribute_exists(#owner) AND #record_version = :expected",
    };
    Expressions {
        update: "REMOVE #owner, #host, #pid, #acquired_at_ms, #ttl_ms, #record_version",
        condition,
        names: names(&[OWNER, HOST, PID, ACQUIRED_AT, TTL, VERSION]),
        values,
    }
}

#[async_trait::async_trait]
impl ConditionalStore for DynamoDbBackend {
    const KIND: &'static str = KIND;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            leases: true,
            fencing_tokens: true,
            ..Capabilities::default()
        }
    }

    fn location(&self, name: &LockName) -> String {
        format!(
            "the item {}={name:?} of DynamoDB table `{}`",
            self.settings.key_attribute, self.settings.table
        )
    }

    async fn write(&self, lease: &Lease, condition: Condition<'_>) -> Result<Write, Error> {
        let client = self.client().await?;
        let version = crate::backend::random_id();
        let expressions = write_expressions(lease, condition, &version);
        let result = self
            .update_item(client, &lease.name, expressions)
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let fencing_token = holder(out.attributes()).and_then(|h| h.fencing_token);
                Ok(Write::Done {
                    version: Version::new(version),
                    fencing_token,
                })
            }
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                let UpdateItemError::ConditionalCheckFailedException(failed) = e.err() else {
                    unreachable!("matched above")
                };
                // ALL_OLD: the item as it is. A free record means it changed under us: read it.
                Ok(Write::Refused(holder(failed.item())))
            }
            Err(e) => Err(self.error("writing the lock item", e)),
        }
    }

    async fn read(&self, name: &LockName) -> Result<Option<Holder>, Error> {
        let client = self.client().await?;
        let (k, v) = self.key(name);
        let out = client
            .get_item()
            .table_name(&self.settings.table)
            .key(k, v)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("reading the lock item", e))?;
        Ok(holder(out.item()))
    }

    async fn delete(
        &self,
        name: &LockName,
        version: &Version,
        owner: Option<&Owner>,
    ) -> Result<bool, Error> {
        let client = self.client().await?;
        let result = self
            .update_item(client, name, release_expressions(version, owner))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) => match e.err() {
                // Free already (an SDK retry of our own release): fine. Someone else's: no.
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    Ok(holder(failed.item()).is_none())
                }
                _ => Err(self.error("releasing the lock item", SdkError::ServiceError(e))),
            },
            Err(e) => Err(self.error("releasing the lock item", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(LockName, Holder)>, Error> {
        // For operators only: a scan (IAM: dynamodb:Scan). Locking itself never scans.
        let client = self.client().await?;
        let key = &self.settings.key_attribute;
        let mut held = Vec::new();
        let mut start = None;
        loop {
            let page = client
                .scan()
                .table_name(&self.settings.table)
                .consistent_read(true)
                .filter_expression("begins_with(#key, :prefix) AND attribute_exists(#owner)")
                .expression_attribute_names("#key", key)
                .expression_attribute_names("#owner", OWNER)
                .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_string()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.error("listing the lock items", e))?;
            for item in page.items() {
                let name = item
                    .get(key)
                    .and_then(|v| v.as_s().ok())
                    .and_then(|n| LockName::new(n.as_str()).ok());
                if let (Some(name), Some(holder)) = (name, holder(Some(item))) {
                    held.push((name, holder));
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(held);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `#name` / `:value` placeholders an expression uses.
    fn placeholders(expressions: &[&str], sigil: char) -> std::collections::BTreeSet<String> {
        expressions
            .iter()
            .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == sigil)))
            .filter(|t| t.starts_with(sigil))
            .map(str::to_string)
            .collect()
    }

    fn assert_exact(e: &Expressions, what: &str) {
        let used = [e.update, e.condition];
        let names: std::collections::BTreeSet<String> = e.names.keys().cloned().collect();
        let values: std::collections::BTreeSet<String> = e.values.keys().cloned().collect();
        assert_eq!(
            names,
            placeholders(&used, '#'),
            "{what}: names sent vs used"
        );
        assert_eq!(
            values,
            placeholders(&used, ':'),
            "{what}: values sent vs used"
        );
    }

    #[test]
    fn every_placeholder_sent_is_used_and_every_one_used_is_sent() {
        let lease = Lease {
            name: LockName::new("a").expect("name"),
            owner: Owner::generate(),
            version: Version::new("v1"),
            ttl: Duration::from_secs(30),
            fencing_token: Some(1),
            acquired_at: std::time::SystemTime::now(),
        };
        let stale = Version::new("v0");
        assert_exact(&write_expressions(&lease, Condition::Free, "v2"), "acquire");
        assert_exact(
            &write_expressions(&lease, Condition::Replace(&stale), "v2"),
            "takeover",
        );
        assert_exact(
            &write_expressions(&lease, Condition::Renew(&lease.version), "v2"),
            "renew",
        );
        assert_exact(
            &release_expressions(&lease.version, Some(&lease.owner)),
            "release",
        );
        assert_exact(&release_expressions(&lease.version, None), "forced release");
    }
}
