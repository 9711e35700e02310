//! Every MQTT topic string the agent uses is built or parsed here (docs/protocol.md §1).

/// Where a downstream message came from: its scope decides precedence and the `target` a
/// signed document must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Terminal,
    Group(String),
    Fleet,
}

impl Scope {
    /// The `target` field a document on this scope must carry.
    pub fn target(&self, terminal_id: &str) -> String {
        match self {
            Scope::Terminal => format!("t/{terminal_id}"),
            Scope::Group(g) => format!("g/{g}"),
            Scope::Fleet => "all".into(),
        }
    }
}

/// A downstream topic, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downstream {
    /// `desired/{kind}`; kind is `trust`, `policy`, `schedule`, `catalog`, `cert` or `app/{name}`.
    Desired {
        scope: Scope,
        kind: String,
    },
    Command {
        scope: Scope,
    },
}

#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    id: String,
    groups: Vec<String>,
}

impl Topics {
    pub fn new(prefix: &str, id: &str, groups: &[String]) -> Self {
        Self {
            prefix: prefix.to_string(),
            id: id.to_string(),
            groups: groups.to_vec(),
        }
    }

    pub fn terminal_id(&self) -> &str {
        &self.id
    }

    fn up(&self, leaf: &str) -> String {
        format!("{}/t/{}/{}", self.prefix, self.id, leaf)
    }

    pub fn state(&self) -> String {
        self.up("state")
    }
    pub fn health(&self) -> String {
        self.up("health")
    }
    pub fn events(&self) -> String {
        self.up("events")
    }
    pub fn replies(&self) -> String {
        self.up("replies")
    }
    pub fn compliance(&self) -> String {
        self.up("compliance")
    }
    pub fn patrol(&self) -> String {
        self.up("patrol")
    }
    pub fn stats(&self) -> String {
        self.up("stats")
    }
    /// Certificate signing requests (§9): QoS 1, not retained.
    pub fn csr(&self) -> String {
        self.up("csr")
    }
    pub fn reported(&self, kind: &str) -> String {
        self.up(&format!("reported/{kind}"))
    }

    fn scope_roots(&self) -> Vec<(Scope, String)> {
        let mut v = vec![(Scope::Terminal, format!("{}/t/{}", self.prefix, self.id))];
        for g in &self.groups {
            v.push((Scope::Group(g.clone()), format!("{}/g/{}", self.prefix, g)));
        }
        v.push((Scope::Fleet, format!("{}/all", self.prefix)));
        v
    }

    /// Subscription filters: `desired/#` and `cmd` for the terminal, each group and the fleet.
    pub fn subscriptions(&self) -> Vec<String> {
        self.scope_roots()
            .into_iter()
            .flat_map(|(_, root)| [format!("{root}/desired/#"), format!("{root}/cmd")])
            .collect()
    }

    /// Parses a topic the broker delivered; `None` for anything outside our subscriptions or
    /// with a malformed kind (the caller reports it as a rejection).
    pub fn parse(&self, topic: &str) -> Option<Downstream> {
        for (scope, root) in self.scope_roots() {
            let Some(rest) = topic.strip_prefix(&root).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if rest == "cmd" {
                return Some(Downstream::Command { scope });
            }
            let kind = rest.strip_prefix("desired/")?;
            // Which kinds exist is the control layer's registry; here only the shape is checked.
            let valid = match kind.split_once('/') {
                Some((family, name)) => {
                    crate::config::valid_id(family) && crate::config::valid_id(name)
                }
                None => crate::config::valid_id(kind),
            };
            return valid.then(|| Downstream::Desired {
                scope,
                kind: kind.to_string(),
            });
        }
        None
    }

    /// Scopes in precedence order (most specific first).
    pub fn precedence(&self) -> Vec<Scope> {
        self.scope_roots().into_iter().map(|(s, _)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Topics {
        Topics::new(
            "kiosk/v1",
            "sz-ft-0001",
            &["futian".into(), "model-x".into()],
        )
    }

    #[test]
    fn builds_upstream() {
        assert_eq!(t().state(), "kiosk/v1/t/sz-ft-0001/state");
        assert_eq!(
            t().reported("app/ui"),
            "kiosk/v1/t/sz-ft-0001/reported/app/ui"
        );
        assert_eq!(t().subscriptions().len(), 8);
    }

    #[test]
    fn parses_downstream() {
        let t = t();
        assert_eq!(
            t.parse("kiosk/v1/g/futian/desired/catalog"),
            Some(Downstream::Desired {
                scope: Scope::Group("futian".into()),
                kind: "catalog".into()
            })
        );
        assert_eq!(
            t.parse("kiosk/v1/all/cmd"),
            Some(Downstream::Command {
                scope: Scope::Fleet
            })
        );
        assert_eq!(
            t.parse("kiosk/v1/t/sz-ft-0001/desired/app/kiosk-ui")
                .map(|d| matches!(d, Downstream::Desired { .. })),
            Some(true)
        );
        assert_eq!(t.parse("kiosk/v1/t/sz-ft-0001/desired/app/../x"), None);
        // Which kinds exist is the registry's to say (control refuses `firmware`); the shape is here.
        assert_eq!(
            t.parse("kiosk/v1/t/sz-ft-0001/desired/firmware"),
            Some(Downstream::Desired {
                scope: Scope::Terminal,
                kind: "firmware".into()
            })
        );
        assert_eq!(t.parse("kiosk/v1/t/sz-ft-0001/desired/Bad Kind"), None);
        assert_eq!(t.parse("kiosk/v1/t/other/cmd"), None);
        assert_eq!(Scope::Group("futian".into()).target("x"), "g/futian");
    }
}
