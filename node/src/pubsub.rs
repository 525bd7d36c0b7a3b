//! XEP-0060 requests and replies over the [`Link`].
//!
//! Requests are built with xmpp-parsers' types; replies are read from the
//! raw element where servers differ (ejabberd adds RSM `<set/>` children
//! that the strict parser rejects).

use xmpp_parsers::data_forms::{DataForm, DataFormType, Field};
use xmpp_parsers::disco::{DiscoItemsQuery, DiscoItemsResult};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::pubsub::pubsub::{Configure, Create, Item, Items, Publish, Retract, Subscribe};
use xmpp_parsers::pubsub::{self, ItemId, NodeName, Owner, PubSub, owner};

use crate::xmpp::{IqError, Link};

/// The configuration Corvid wants on a feed node (spec §"Node configuration").
pub fn feed_node_config(max_items: u32, access_model: &str) -> Vec<(&'static str, String)> {
    vec![
        ("pubsub#persist_items", "1".into()),
        ("pubsub#max_items", max_items.to_string()),
        ("pubsub#access_model", access_model.into()),
        ("pubsub#publish_model", "publishers".into()),
        ("pubsub#notify_retract", "1".into()),
        ("pubsub#notify_delete", "1".into()),
        ("pubsub#deliver_payloads", "1".into()),
        ("pubsub#send_last_published_item", "never".into()),
    ]
}

fn form(fields: &[(&'static str, String)]) -> DataForm {
    DataForm::new(
        DataFormType::Submit,
        ns::PUBSUB_CONFIGURE,
        fields
            .iter()
            .map(|(k, v)| Field::text_single(k, v))
            .collect(),
    )
}

fn jid(service: &str) -> Result<Jid, IqError> {
    BareJid::new(service)
        .map(Into::into)
        .map_err(|e| IqError::Stanza {
            condition: "JidMalformed".into(),
            text: format!(": {e}"),
            error: Box::new(xmpp_parsers::stanza_error::StanzaError::new(
                xmpp_parsers::stanza_error::ErrorType::Modify,
                xmpp_parsers::stanza_error::DefinedCondition::JidMalformed,
                "en",
                e.to_string(),
            )),
        })
}

/// Creates a node with a configuration; if it exists, reconfigures it.
///
/// # Errors
/// When neither works (e.g. the account is not an admin of the service).
pub async fn ensure_node(
    link: &Link,
    service: &str,
    node: &str,
    fields: &[(&'static str, String)],
) -> Result<(), IqError> {
    let create = Iq::from_set(
        "",
        PubSub::Create {
            create: Create {
                node: Some(NodeName(node.into())),
            },
            configure: Some(Configure {
                form: Some(form(fields)),
            }),
        },
    )
    .with_to(jid(service)?);
    match link.iq(create).await {
        Ok(_) => Ok(()),
        Err(e) if e.is(xmpp_parsers::stanza_error::DefinedCondition::Conflict) => {
            configure(link, service, node, fields).await
        }
        Err(e) => Err(e),
    }
}

/// Configures an existing node.
///
/// # Errors
/// The service's error.
pub async fn configure(
    link: &Link,
    service: &str,
    node: &str,
    fields: &[(&'static str, String)],
) -> Result<(), IqError> {
    let iq = Iq::from_set(
        "",
        Owner {
            payload: owner::Payload::Configure {
                node: Some(NodeName(node.into())),
                form: Some(form(fields)),
            },
        },
    )
    .with_to(jid(service)?);
    link.iq(iq).await.map(|_| ())
}

/// Publishes one item (Prosody honours only the first item of a publish).
///
/// # Errors
/// The service's error.
pub async fn publish(
    link: &Link,
    service: &str,
    node: &str,
    item_id: &str,
    payload: Element,
) -> Result<(), IqError> {
    let iq = Iq::from_set(
        "",
        PubSub::Publish {
            publish: Publish {
                node: NodeName(node.into()),
                items: vec![Item {
                    id: Some(ItemId(item_id.into())),
                    publisher: None,
                    payload: Some(payload),
                }],
            },
            publish_options: None,
        },
    )
    .with_to(jid(service)?);
    link.iq(iq).await.map(|_| ())
}

/// Retracts one item and notifies subscribers.
///
/// # Errors
/// The service's error (`item-not-found` is treated as success).
pub async fn retract(link: &Link, service: &str, node: &str, item_id: &str) -> Result<(), IqError> {
    let iq = Iq::from_set(
        "",
        PubSub::Retract(Retract {
            node: NodeName(node.into()),
            notify: true,
            items: vec![Item {
                id: Some(ItemId(item_id.into())),
                publisher: None,
                payload: None,
            }],
        }),
    )
    .with_to(jid(service)?);
    match link.iq(iq).await {
        Err(e) if e.is(xmpp_parsers::stanza_error::DefinedCondition::ItemNotFound) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Purges a node (owner).
///
/// # Errors
/// The service's error.
pub async fn purge(link: &Link, service: &str, node: &str) -> Result<(), IqError> {
    let iq = Iq::from_set(
        "",
        Owner {
            payload: owner::Payload::Purge {
                node: NodeName(node.into()),
            },
        },
    )
    .with_to(jid(service)?);
    link.iq(iq).await.map(|_| ())
}

/// Deletes a node (owner).
///
/// # Errors
/// The service's error.
pub async fn delete(link: &Link, service: &str, node: &str) -> Result<(), IqError> {
    let iq = Iq::from_set(
        "",
        Owner {
            payload: owner::Payload::Delete {
                node: NodeName(node.into()),
                redirect_uri: None,
            },
        },
    )
    .with_to(jid(service)?);
    link.iq(iq).await.map(|_| ())
}

/// Subscribes `subscriber` to a node.
///
/// # Errors
/// The service's error.
pub async fn subscribe(
    link: &Link,
    service: &str,
    node: &str,
    subscriber: &BareJid,
) -> Result<(), IqError> {
    let iq = Iq::from_set(
        "",
        PubSub::Subscribe {
            subscribe: Some(Subscribe {
                jid: subscriber.clone().into(),
                node: Some(NodeName(node.into())),
            }),
            options: None,
        },
    )
    .with_to(jid(service)?);
    link.iq(iq).await.map(|_| ())
}

/// Whether `subscriber` holds a `subscribed` subscription to the node.
///
/// # Errors
/// The service's error.
pub async fn is_subscribed(
    link: &Link,
    service: &str,
    node: &str,
    subscriber: &BareJid,
) -> Result<bool, IqError> {
    let iq = Iq::from_get(
        "",
        PubSub::Subscriptions(pubsub::pubsub::Subscriptions {
            node: Some(NodeName(node.into())),
            subscription: vec![],
        }),
    )
    .with_to(jid(service)?);
    let Some(reply) = link.iq(iq).await? else {
        return Ok(false);
    };
    let me = subscriber.to_string();
    Ok(reply
        .get_child("subscriptions", ns::PUBSUB)
        .into_iter()
        .flat_map(|s| s.children())
        .filter(|c| c.is("subscription", ns::PUBSUB))
        .any(|c| {
            c.attr("node").is_none_or(|n| n == node)
                && c.attr("jid")
                    .is_some_and(|j| j.split('/').next() == Some(me.as_str()))
                && c.attr("subscription") == Some("subscribed")
        }))
}

/// The item ids on a node (XEP-0060 §5.5, disco#items on the node).
///
/// # Errors
/// The service's error.
pub async fn item_ids(link: &Link, service: &str, node: &str) -> Result<Vec<String>, IqError> {
    let iq = Iq::from_get(
        "",
        DiscoItemsQuery {
            node: Some(node.into()),
            rsm: None,
        },
    )
    .with_to(jid(service)?);
    let Some(reply) = link.iq(iq).await? else {
        return Ok(Vec::new());
    };
    Ok(match DiscoItemsResult::try_from(reply.clone()) {
        Ok(r) => r.items.into_iter().filter_map(|i| i.name).collect(),
        // Lenient fallback: read <item name=.../> directly.
        Err(_) => reply
            .children()
            .filter_map(|c| c.attr("name").map(str::to_owned))
            .collect(),
    })
}

/// Fetches items: the given ids, or (with no ids) the latest `max_items`.
///
/// # Errors
/// The service's error.
pub async fn items(
    link: &Link,
    service: &str,
    node: &str,
    ids: &[&str],
    max_items: Option<u32>,
) -> Result<Vec<(String, Option<Element>)>, IqError> {
    let iq = Iq::from_get(
        "",
        PubSub::Items(Items {
            node: NodeName(node.into()),
            max_items,
            subid: None,
            items: ids
                .iter()
                .map(|i| Item {
                    id: Some(ItemId((*i).into())),
                    publisher: None,
                    payload: None,
                })
                .collect(),
        }),
    )
    .with_to(jid(service)?);
    let Some(reply) = link.iq(iq).await? else {
        return Ok(Vec::new());
    };
    Ok(parse_items(&reply))
}

/// Reads `(id, payload)` pairs from an items result, tolerating extra children.
pub fn parse_items(reply: &Element) -> Vec<(String, Option<Element>)> {
    let Some(items) = reply.get_child("items", ns::PUBSUB) else {
        return Vec::new();
    };
    items
        .children()
        .filter(|c| c.is("item", ns::PUBSUB))
        .filter_map(|c| Some((c.attr("id")?.to_owned(), c.children().next().cloned())))
        .collect()
}

/// A PubSub event, read from `<event xmlns='…pubsub#event'/>`.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// Items published and/or retracted.
    Items {
        /// Node.
        node: String,
        /// `(id, payload)`.
        published: Vec<(String, Option<Element>)>,
        /// Retracted ids.
        retracted: Vec<String>,
    },
    /// All items removed.
    Purge {
        /// Node.
        node: String,
    },
    /// Node deleted.
    Delete {
        /// Node.
        node: String,
    },
    /// Something else (configuration, subscription).
    Other,
}

/// Parses an event element.
pub fn parse_event(event: &Element) -> FeedEvent {
    match pubsub::Event::try_from(event.clone()) {
        Ok(e) => match e.payload {
            pubsub::event::Payload::Items {
                node,
                published,
                retracted,
            } => FeedEvent::Items {
                node: node.0,
                published: published
                    .into_iter()
                    .filter_map(|i| Some((i.id?.0, i.payload)))
                    .collect(),
                retracted: retracted.into_iter().map(|i| i.0).collect(),
            },
            pubsub::event::Payload::Purge { node } => FeedEvent::Purge { node: node.0 },
            pubsub::event::Payload::Delete { node, .. } => FeedEvent::Delete { node: node.0 },
            _ => FeedEvent::Other,
        },
        Err(_) => FeedEvent::Other,
    }
}
