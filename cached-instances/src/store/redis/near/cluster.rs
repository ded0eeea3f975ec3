//! The near cache's tracking backend for a Redis Cluster: one tracking
//! connection per primary, the slot map they were made for, reads routed to
//! each slot's owner, and the check that the map still holds (the reasons
//! are in the parent module's docs).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster_routing::Slot;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind};
use redis::{RedisError, Value};

/// How often the background task asks every tracked primary for the slot
/// map: the bound on how long a topology change the connections do not see
/// (a replica promoted while the old primary still answers us) goes
/// unnoticed. It costs one `CLUSTER SLOTS` per primary per interval.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// One slot range and its primary, as `CLUSTER SLOTS` names them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    start: u16,
    end: u16,
    host: String,
    port: u16,
    id: String,
}

/// Who owns which slots: the ranges, sorted.
type Shape = Vec<Range>;

/// The tracking connections of one generation, and the topology they
/// cover.
pub(super) struct Tracked {
    /// One tracking connection per primary, with the host it was reached
    /// at.
    primaries: Vec<(String, MultiplexedConnection)>,
    /// Each covered slot's owner, an index in `primaries`.
    owner: HashMap<Slot, usize>,
    /// The topology the connections were made for.
    shape: Shape,
}

fn failure(reason: &'static str) -> RedisError {
    RedisError::from((ErrorKind::UnexpectedReturnType, reason))
}

impl Tracked {
    /// Discovers the primaries through `seeds` (a plain connection each,
    /// with `plain`, until one answers), opens a tracking connection to
    /// each with `tracking` (which carries the push handler), and checks
    /// that every primary agrees on the slot map.
    pub(super) async fn make(
        seeds: &[ConnectionInfo],
        plain: &AsyncConnectionConfig,
        tracking: &AsyncConnectionConfig,
    ) -> Result<Tracked, RedisError> {
        let (seed, shape) = discover(seeds, plain).await?;
        let mut nodes: Vec<(&str, u16, &str)> = Vec::new();
        let mut owner = HashMap::with_capacity(16_384);
        for range in &shape {
            let node = (range.host.as_str(), range.port, range.id.as_str());
            let index = match nodes.iter().position(|known| *known == node) {
                Some(index) => index,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            for slot in range.start..=range.end {
                if let Some(slot) = Slot::new(slot) {
                    owner.insert(slot, index);
                }
            }
        }
        let primaries =
            futures_util::future::try_join_all(nodes.iter().map(|&(host, port, _)| async move {
                let client = Client::open(at(seed, host, port)?)?;
                let connection = super::tracking_connection(&client, tracking).await?;
                Ok::<_, RedisError>((host.to_owned(), connection))
            }))
            .await?;
        let tracked = Tracked {
            primaries,
            owner,
            shape,
        };
        // The seed may have answered with a map the others have moved on
        // from: the tier relies on it only once every primary agrees.
        if tracked.unchanged().await {
            Ok(tracked)
        } else {
            Err(failure("the cluster's primaries disagree on its slot map"))
        }
    }

    /// Whether every tracked primary answers with the slot map the
    /// connections were made for.
    pub(super) async fn unchanged(&self) -> bool {
        let views =
            futures_util::future::join_all(self.primaries.iter().map(|(host, connection)| {
                let mut connection = connection.clone();
                async move {
                    let reply: Value = redis::cmd("CLUSTER")
                        .arg("SLOTS")
                        .query_async(&mut connection)
                        .await
                        .ok()?;
                    parse(&reply, host)
                }
            }))
            .await;
        views.iter().all(|view| view.as_ref() == Some(&self.shape))
    }

    /// Reads `keys` on their owners' tracking connections: one `GET` or
    /// `MGET` per hash slot (a cluster refuses a command on keys of several
    /// slots), concurrently. A slot no primary covered, or a redirection
    /// (the slot moved), fails the read.
    pub(super) async fn read(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, RedisError> {
        let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
        let mut index: HashMap<Slot, usize> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = Slot::for_key(key);
            let group = *index.entry(slot).or_insert_with(|| {
                groups.push((slot, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push(i);
        }
        let replies = futures_util::future::try_join_all(groups.iter().map(|(slot, group)| {
            let owner = self.owner.get(slot).copied();
            async move {
                let owner = owner.ok_or_else(|| failure("a slot no tracked primary owns"))?;
                let (_, connection) = &self.primaries[owner];
                let keys: Vec<&str> = group.iter().map(|&i| keys[i]).collect();
                super::read_on(&mut connection.clone(), &keys).await
            }
        }))
        .await?;
        let mut out: Vec<Option<Bytes>> = vec![None; keys.len()];
        for ((_, group), values) in groups.iter().zip(replies) {
            if values.len() != group.len() {
                return Err(failure("a reply of the wrong length"));
            }
            for (&i, value) in group.iter().zip(values) {
                out[i] = value;
            }
        }
        Ok(out)
    }
}

/// The slot map, from the first seed that answers (with that seed).
async fn discover<'s>(
    seeds: &'s [ConnectionInfo],
    plain: &AsyncConnectionConfig,
) -> Result<(&'s ConnectionInfo, Shape), RedisError> {
    let mut last = failure("no cluster node given");
    for seed in seeds {
        let asked = match seed.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
            _ => String::new(),
        };
        let answer = async {
            let mut connection = Client::open(seed.clone())?
                .get_multiplexed_async_connection_with_config(plain)
                .await?;
            let reply: Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut connection)
                .await?;
            parse(&reply, &asked).ok_or_else(|| failure("an unreadable CLUSTER SLOTS reply"))
        };
        match answer.await {
            Ok(shape) if !shape.is_empty() => return Ok((seed, shape)),
            Ok(_) => last = failure("the cluster has no slots assigned"),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// `seed`'s settings (credentials, TLS, protocol) at `host:port`.
fn at(seed: &ConnectionInfo, host: &str, port: u16) -> Result<ConnectionInfo, RedisError> {
    let mut addr = seed.addr().clone();
    match &mut addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            host.clone_into(h);
            *p = port;
        }
        _ => return Err(failure("cluster nodes are reached over TCP")),
    }
    Ok(seed.clone().set_addr(addr))
}

/// A `CLUSTER SLOTS` reply as a sorted [`Shape`]; `asked` stands for a
/// node that does not know its own address (an empty host). `None` for a
/// reply of another form.
fn parse(reply: &Value, asked: &str) -> Option<Shape> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let mut shape = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return None;
        };
        let [
            Value::Int(start),
            Value::Int(end),
            Value::Array(primary),
            ..,
        ] = fields.as_slice()
        else {
            return None;
        };
        let [host, Value::Int(port), rest @ ..] = primary.as_slice() else {
            return None;
        };
        let host = text(host)?;
        shape.push(Range {
            start: u16::try_from(*start).ok()?,
            end: u16::try_from(*end).ok()?,
            host: if host.is_empty() {
                asked.to_owned()
            } else {
                host
            },
            port: u16::try_from(*port).ok()?,
            // Absent before Redis 4.
            id: rest.first().and_then(text).unwrap_or_default(),
        });
    }
    shape.sort();
    Some(shape)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn a_slot_map_is_read_in_any_order_and_garbage_is_refused() {
        let a = Value::Array(vec![
            Value::Int(0),
            Value::Int(99),
            node("10.0.0.1", 7000, "a"),
        ]);
        let b = Value::Array(vec![
            Value::Int(100),
            Value::Int(16_383),
            node("", 7001, "b"),
            node("10.0.0.3", 7002, "replica"),
        ]);
        let one = parse(&Value::Array(vec![a.clone(), b.clone()]), "10.0.0.2").unwrap();
        let other = parse(&Value::Array(vec![b, a]), "10.0.0.2").unwrap();
        assert_eq!(one, other);
        assert_eq!(one.len(), 2);
        assert_eq!(one[1].host, "10.0.0.2", "an empty host is the node asked");
        assert_eq!(one[1].port, 7001);
        assert!(parse(&Value::Int(1), "h").is_none());
        assert!(parse(&Value::Array(vec![Value::Int(1)]), "h").is_none());
        let out_of_range = Value::Array(vec![Value::Int(0), Value::Int(70_000), node("h", 1, "x")]);
        assert!(parse(&Value::Array(vec![out_of_range]), "h").is_none());
    }
}
