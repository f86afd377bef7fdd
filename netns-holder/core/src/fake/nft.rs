//! [`Firewall`] of the [`FakeSystem`]: the nftables table, its elements, listeners, conntrack.

use std::collections::{BTreeMap, BTreeSet};

use super::{FakeSystem, FakeTable};
use crate::egress::EgressExempt;
use crate::firewall::{
    self, ConntrackFlush, FirewallTable, HostPortElement, Listener, ObservedTable,
};
use crate::ports::{Family, Protocol};
use crate::system::{Firewall, SystemError};

impl Firewall for FakeSystem {
    async fn replace_table(&self, table: &FirewallTable) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("replace_table {}", table.elements.len()))
            .await?;
        let mut elements = BTreeMap::new();
        for e in &table.elements {
            if elements.insert(e.key(), *e).is_some() {
                return Err(SystemError::AlreadyExists { object: e.object() });
            }
        }
        m.table = Some(FakeTable {
            base: table.base.clone(),
            elements,
            extra_lines: Vec::new(),
            removed_lines: Vec::new(),
            egress_exempt: table.egress_exempt.clone(),
        });
        Ok(())
    }

    async fn sync_egress_exempt(&self, exempt: &EgressExempt) -> Result<(), SystemError> {
        let mut m = self.call(format!("sync_egress_exempt {exempt}")).await?;
        let Some(table) = m.table.as_mut() else {
            return Err(SystemError::NotFound {
                object: firewall::table_object(),
            });
        };
        table.egress_exempt = exempt.clone();
        Ok(())
    }

    async fn add_elements(&self, elements: &[HostPortElement]) -> Result<(), SystemError> {
        let texts: Vec<String> = elements.iter().map(ToString::to_string).collect();
        let mut m = self
            .call(format!("add_elements {}", texts.join(", ")))
            .await?;
        let Some(table) = m.table.as_mut() else {
            return Err(SystemError::NotFound {
                object: firewall::table_object(),
            });
        };
        let mut keys = BTreeSet::new();
        for e in elements {
            if table.elements.contains_key(&e.key()) || !keys.insert(e.key()) {
                return Err(SystemError::AlreadyExists { object: e.object() });
            }
        }
        for e in elements {
            table.elements.insert(e.key(), *e);
        }
        Ok(())
    }

    async fn delete_elements(&self, elements: &[HostPortElement]) -> Result<usize, SystemError> {
        let texts: Vec<String> = elements.iter().map(|e| e.key_text()).collect();
        let mut m = self
            .call(format!("delete_elements {}", texts.join(", ")))
            .await?;
        let Some(table) = m.table.as_mut() else {
            return Ok(0);
        };
        Ok(elements
            .iter()
            .filter(|e| table.elements.remove(&e.key()).is_some())
            .count())
    }

    async fn inspect_table(&self) -> Result<Option<ObservedTable>, SystemError> {
        let m = self.call("inspect_table".to_string()).await?;
        Ok(m.table.as_ref().map(|t| {
            let mut lines = firewall::expected_lines(&t.base);
            for removed in &t.removed_lines {
                if let Some(i) = lines.iter().position(|l| l == removed) {
                    lines.remove(i);
                }
            }
            lines.extend(t.extra_lines.iter().cloned());
            ObservedTable {
                lines,
                elements: t.elements.values().copied().collect(),
                unparsed: Vec::new(),
                egress_exempt: t.egress_exempt.clone(),
            }
        }))
    }

    async fn listeners(&self, ports: &[(Protocol, u16)]) -> Result<Vec<Listener>, SystemError> {
        let texts: Vec<String> = ports.iter().map(|(p, n)| format!("{p}/{n}")).collect();
        let m = self.call(format!("listeners {}", texts.join(","))).await?;
        Ok(m.listeners
            .iter()
            .filter(|l| ports.contains(&(l.protocol, l.port)))
            .cloned()
            .collect())
    }

    async fn flush_conntrack(&self, flushes: &[ConntrackFlush]) -> Result<u64, SystemError> {
        let texts: Vec<String> = flushes.iter().map(ToString::to_string).collect();
        let mut m = self
            .call(format!("flush_conntrack {}", texts.join(", ")))
            .await?;
        let before = m.conntrack.len();
        m.conntrack.retain(|entry| {
            !flushes.iter().any(|f| match f {
                ConntrackFlush::ReplySource { address } => entry.reply_source == *address,
                ConntrackFlush::DestinationPort { family, port } => {
                    entry.destination_port == *port && Family::of(entry.reply_source) == *family
                }
            })
        });
        Ok((before - m.conntrack.len()) as u64)
    }
}
