//! Request routing: path and method → [`Endpoint`], and the error dialect of the answer.

use filters::{RouteInfo, Service};

/// The error shape a caller understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    OpenAI,
    Gemini,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
    /// `GET /v1/models`
    Models,
    /// `HEAD /` or `GET /`: a connectivity probe, answered at once.
    Probe,
    /// `GET /health`
    Health,
    /// Known path, wrong method.
    MethodNotAllowed(&'static str),
    NotFound,
}

impl Endpoint {
    /// Stable name for metrics and filters.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models => "models",
            Endpoint::Probe => "probe",
            Endpoint::Health => "health",
            Endpoint::MethodNotAllowed(_) => "method_not_allowed",
            Endpoint::NotFound => "not_found",
        }
    }

    /// Whether the endpoint carries a body to relay upstream.
    pub fn is_relayed(self) -> bool {
        matches!(self, Endpoint::Messages | Endpoint::CountTokens)
    }

    /// The upstream path of a relayed endpoint.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            _ => "/v1/messages",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub endpoint: Endpoint,
    pub dialect: Dialect,
    pub service: Service,
}

impl Route {
    pub fn info(&self) -> RouteInfo {
        RouteInfo {
            service: self.service,
            endpoint: self.endpoint.name(),
        }
    }
}

/// The mount points of the Anthropic surface: `ANTHROPIC_BASE_URL` may end in any of them.
const ANTHROPIC_PREFIXES: [&str; 4] = ["/api/claude", "/api", "/claude", ""];

pub fn classify(method: &http::Method, path: &str) -> Route {
    let anthropic = |endpoint| Route {
        endpoint,
        dialect: Dialect::Anthropic,
        service: Service::Claude,
    };
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    for prefix in ANTHROPIC_PREFIXES {
        let Some(rest) = path.strip_prefix(prefix) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let endpoint = match rest {
            "" | "/" => match *method {
                http::Method::HEAD | http::Method::GET => Endpoint::Probe,
                _ => Endpoint::MethodNotAllowed("HEAD, GET"),
            },
            "/v1/messages" => post_only(method, Endpoint::Messages),
            "/v1/messages/count_tokens" => post_only(method, Endpoint::CountTokens),
            "/v1/models" => match *method {
                http::Method::GET => Endpoint::Models,
                _ => Endpoint::MethodNotAllowed("GET"),
            },
            "/health" if prefix.is_empty() => match *method {
                http::Method::GET | http::Method::HEAD => Endpoint::Health,
                _ => Endpoint::MethodNotAllowed("GET"),
            },
            _ => continue,
        };
        return anthropic(endpoint);
    }
    anthropic(Endpoint::NotFound)
}

fn post_only(method: &http::Method, e: Endpoint) -> Endpoint {
    if *method == http::Method::POST {
        e
    } else {
        Endpoint::MethodNotAllowed("POST")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes_under_every_prefix() {
        for p in ["", "/api", "/claude", "/api/claude"] {
            assert_eq!(
                classify(&Method::POST, &format!("{p}/v1/messages")).endpoint,
                Endpoint::Messages,
                "{p}"
            );
            assert_eq!(
                classify(&Method::POST, &format!("{p}/v1/messages/count_tokens")).endpoint,
                Endpoint::CountTokens
            );
            assert_eq!(
                classify(&Method::GET, &format!("{p}/v1/models")).endpoint,
                Endpoint::Models
            );
            assert_eq!(classify(&Method::HEAD, &format!("{p}/")).endpoint, Endpoint::Probe);
        }
        assert_eq!(classify(&Method::HEAD, "/api").endpoint, Endpoint::Probe);
        assert_eq!(classify(&Method::GET, "/health").endpoint, Endpoint::Health);
        assert_eq!(
            classify(&Method::GET, "/v1/messages").endpoint,
            Endpoint::MethodNotAllowed("POST")
        );
        assert_eq!(classify(&Method::POST, "/v2/other").endpoint, Endpoint::NotFound);
        assert_eq!(
            classify(&Method::POST, "/apix/v1/messages").endpoint,
            Endpoint::NotFound
        );
        assert_eq!(
            classify(&Method::POST, "/api/v1/messages/").endpoint,
            Endpoint::Messages
        );
    }
}
