//! Pointing a child's backend at the parent's fault proxy, from the backend URL alone.
//!
//! | URL | where the server is | what the child gets |
//! |---|---|---|
//! | `s3://…`, `dynamodb://…` | `AWS_ENDPOINT_URL` | `AWS_ENDPOINT_URL=http://PROXY` |
//! | `gs://…` | `STORAGE_EMULATOR_HOST` | `STORAGE_EMULATOR_HOST=http://PROXY` |
//! | `mongodb://`, `postgres://`, `redis://`, `etcd://` | the URL's `host:port` | the URL with `PROXY` in its place |
//!
//! `file://` and `memory://` have no server: their calls are counted with `FaultyBackend`.

use std::net::SocketAddr;

/// How to reach a remote backend's server.
#[derive(Debug, Clone)]
pub enum Route {
    /// No server (file, memory).
    Local,
    /// The server is named by an environment variable.
    Env {
        /// The variable.
        var: &'static str,
        /// The server's address.
        upstream: SocketAddr,
    },
    /// The server is the URL's `host:port`.
    Authority {
        /// The server's address.
        upstream: SocketAddr,
    },
}

impl Route {
    /// The route of `url`, reading the endpoint variables of this process.
    pub fn of(url: &str) -> Result<Route, String> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        let from_env = |var: &'static str| -> Result<Route, String> {
            let value = std::env::var(var).map_err(|_| {
                format!("{url}: set {var} to the server (`source /tmp/standins.env`)")
            })?;
            Ok(Route::Env {
                var,
                upstream: address(&value)?,
            })
        };
        match scheme {
            "file" | "memory" => Ok(Route::Local),
            "s3" | "dynamodb" => from_env("AWS_ENDPOINT_URL"),
            "gs" => from_env("STORAGE_EMULATOR_HOST"),
            "mongodb" | "postgres" | "postgresql" | "redis" | "etcd" => Ok(Route::Authority {
                upstream: address(authority(url).1)?,
            }),
            other => Err(format!("{url}: no route for the scheme `{other}`")),
        }
    }

    /// The server's address, for a remote backend.
    pub fn upstream(&self) -> Option<SocketAddr> {
        match self {
            Route::Local => None,
            Route::Env { upstream, .. } | Route::Authority { upstream } => Some(*upstream),
        }
    }

    /// The URL and the environment a child uses to reach the server through `proxy`.
    pub fn through(&self, url: &str, proxy: SocketAddr) -> (String, Vec<(&'static str, String)>) {
        match self {
            Route::Local => (url.to_string(), Vec::new()),
            Route::Env { var, .. } => (url.to_string(), vec![(*var, format!("http://{proxy}"))]),
            Route::Authority { .. } => {
                let (start, host, end) = authority(url);
                let _ = host;
                (format!("{start}{proxy}{end}"), Vec::new())
            }
        }
    }
}

/// Splits `scheme://[userinfo@]host:port/rest` into (`scheme://userinfo@`, `host:port`,
/// `/rest`).
fn authority(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let host_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_part = &rest[..host_len];
    let at = host_part.rfind('@').map_or(0, |i| i + 1);
    let start = after_scheme + at;
    let end = after_scheme + host_len;
    (&url[..start], &url[start..end], &url[end..])
}

/// `http://127.0.0.1:PORT`, `127.0.0.1:PORT` or `localhost:PORT` as an address.
fn address(value: &str) -> Result<SocketAddr, String> {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.replace("localhost", "127.0.0.1");
    host.parse()
        .map_err(|e| format!("`{value}`: not an address with a port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_the_authority() {
        let url = "postgres://dlock:dlock@127.0.0.1:5432/db?table=t";
        let route = Route::of(url).unwrap();
        assert_eq!(route.upstream(), Some("127.0.0.1:5432".parse().unwrap()));
        let (child, env) = route.through(url, "127.0.0.1:9".parse().unwrap());
        assert_eq!(child, "postgres://dlock:dlock@127.0.0.1:9/db?table=t");
        assert!(env.is_empty());
        let url = "mongodb://127.0.0.1:27017/x?directConnection=true";
        let (child, _) = Route::of(url)
            .unwrap()
            .through(url, "127.0.0.1:9".parse().unwrap());
        assert_eq!(child, "mongodb://127.0.0.1:9/x?directConnection=true");
    }
}
