//! Who may call what. Every admin route has one required role, looked up here by its route pattern
//! before the handler runs: a route missing from [`policy`] needs `admin`, so a new endpoint is
//! closed until it is placed. The same layer writes the audit record of every change
//! ([`super::audit`]).
//!
//! Roles: `viewer` reads; `operator` also creates, changes and deletes keys, accounts and groups;
//! `admin` does everything, including users, settings, exports, imports and the audit log. Every
//! signed-in user manages their own password and sessions.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AdminState;
use super::audit;
use super::routes::{ApiError, authenticate, unauthorized};
use crate::store::AdminRole;

/// The signed-in user a request acts for, put into the request by [`guard`]. A handler that
/// takes it cannot run without a valid session.
#[derive(Clone, Debug)]
pub struct Actor {
    pub username: String,
    pub role: AdminRole,
    /// The SHA-256 of the session's bearer token (the session's id in the session list).
    pub session: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Actor>().cloned().ok_or_else(unauthorized)
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No session needed (health, metrics, the OpenAPI document, login).
    Public,
    /// A session whose role is at least this one.
    Role(AdminRole),
}

/// What the guard does for a route: who may call it, and whether the call is audited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub access: Access,
    pub audited: bool,
}

/// Admin-only areas: users, settings, the audit log, backups and imports, alerts, and every
/// export (a CSV of usage or requests is a copy of the data leaving the relay).
fn admin_only(route: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "/admin/api/users",
        "/admin/api/settings",
        "/admin/api/audit",
        "/admin/api/export",
        "/admin/api/import",
        "/admin/api/alerts",
    ];
    PREFIXES
        .iter()
        .any(|p| route == *p || route.starts_with(&format!("{p}/")))
        || route.ends_with("export.csv")
}

/// Areas an operator changes.
fn operated(route: &str) -> bool {
    ["/admin/api/keys", "/admin/api/accounts", "/admin/api/groups"]
        .iter()
        .any(|p| route == *p || route.starts_with(&format!("{p}/")))
}

/// The policy of a route, by method and route pattern (as routed: `/admin/api/keys/{id}`).
pub fn policy(method: &Method, route: &str) -> Policy {
    let read = method == Method::GET || method == Method::HEAD;
    let public = |audited| Policy {
        access: Access::Public,
        audited,
    };
    let role = |r, audited| Policy {
        access: Access::Role(r),
        audited,
    };
    match route {
        "/health" | "/metrics" | "/admin/api/openapi.json" => return public(false),
        "/admin/api/login" => return public(true),
        // Every signed-in user: who they are, and their own password and sessions.
        "/admin/api/me"
        | "/admin/api/logout"
        | "/admin/api/password"
        | "/admin/api/sessions"
        | "/admin/api/sessions/{id}" => return role(AdminRole::Viewer, !read),
        _ => {}
    }
    if admin_only(route) {
        // Exports are audited although they only read.
        return role(AdminRole::Admin, !read || route.ends_with("export.csv"));
    }
    if read && route.starts_with("/admin/api/") {
        return role(AdminRole::Viewer, false);
    }
    if operated(route) {
        return role(AdminRole::Operator, true);
    }
    role(AdminRole::Admin, !read)
}

fn forbidden(actor: &Actor, need: AdminRole) -> ApiError {
    ApiError(
        StatusCode::FORBIDDEN,
        "permission_error",
        format!(
            "this action needs the `{}` role; user `{}` has `{}`",
            need.as_str(),
            actor.username,
            actor.role.as_str()
        ),
    )
}

/// Authenticates and authorises every routed admin request, then runs it; audited calls are
/// recorded with their outcome (a refused one too).
pub async fn guard(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("", |m| m.as_str()).to_owned();
    let p = policy(req.method(), &route);
    let actor = match p.access {
        Access::Public => None,
        Access::Role(need) => {
            let actor = match authenticate(&state, req.headers()).await {
                Ok(a) => a,
                Err(e) => return e.into_response(),
            };
            if actor.role < need {
                let refused = forbidden(&actor, need);
                if p.audited {
                    let ctx = audit::Context::new(&state, peer, &req, &route, Some(actor.clone()));
                    audit::refused(&state, ctx, StatusCode::FORBIDDEN).await;
                }
                return refused.into_response();
            }
            req.extensions_mut().insert(actor.clone());
            Some(actor)
        }
    };
    if !p.audited {
        return next.run(req).await;
    }
    audit::around(&state, peer, req, &route, actor, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(m: Method, r: &str) -> Access {
        policy(&m, r).access
    }

    #[test]
    fn each_area_needs_its_role() {
        use AdminRole::*;
        assert_eq!(access(Method::GET, "/health"), Access::Public);
        assert_eq!(access(Method::POST, "/admin/api/login"), Access::Public);
        assert!(policy(&Method::POST, "/admin/api/login").audited);
        assert_eq!(access(Method::GET, "/admin/api/keys"), Access::Role(Viewer));
        assert_eq!(access(Method::GET, "/admin/api/usage/global"), Access::Role(Viewer));
        assert_eq!(access(Method::POST, "/admin/api/keys"), Access::Role(Operator));
        assert_eq!(
            access(Method::PATCH, "/admin/api/accounts/{id}"),
            Access::Role(Operator)
        );
        assert_eq!(
            access(Method::POST, "/admin/api/groups/{name}/rename"),
            Access::Role(Operator)
        );
        assert_eq!(access(Method::GET, "/admin/api/usage/export.csv"), Access::Role(Admin));
        assert!(policy(&Method::GET, "/admin/api/usage/export.csv").audited);
        assert_eq!(access(Method::GET, "/admin/api/users"), Access::Role(Admin));
        assert_eq!(access(Method::GET, "/admin/api/audit"), Access::Role(Admin));
        assert_eq!(access(Method::POST, "/admin/api/password"), Access::Role(Viewer));
        assert_eq!(access(Method::DELETE, "/admin/api/sessions/{id}"), Access::Role(Viewer));
        // Not placed: closed to all but admins.
        assert_eq!(access(Method::POST, "/admin/api/something-new"), Access::Role(Admin));
        assert!(!policy(&Method::GET, "/admin/api/keys").audited);
        assert!(policy(&Method::DELETE, "/admin/api/keys/{id}").audited);
        // A prefix is a path segment, not a string prefix.
        assert_eq!(access(Method::GET, "/admin/api/usersx"), Access::Role(Viewer));
    }
}
