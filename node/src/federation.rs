//! Federation directory: membership cards (spec §"Federation directory").
//!
//! A member publishes its signed card on the directory node (item id = its
//! domain) and on its own feed (item `card`). A reader verifies the card's
//! signature with the key the card carries, then fetches the `card` item
//! from the member's own feed, over s2s, and calls the member
//! domain-verified when the same key signs it there. A card makes a member
//! visible; trust comes only from the operator pinning its key.

use anyhow::{Context, Result};
use corvid_protocol::card::MembershipCard;
use corvid_protocol::feed::CARD_ITEM;
use corvid_protocol::item::{Body, Envelope, FeedAddress, KeyRing, SignedItem};
use corvid_protocol::record::Issuer;
use serde::Serialize;

use crate::engine::Engine;
use crate::pubsub;
use crate::xmpp::Link;

/// This node's card.
pub fn own_card(engine: &Engine) -> Option<MembershipCard> {
    let settings = engine.settings();
    let dir = settings.directory.as_ref()?;
    Some(MembershipCard {
        domain: settings.domain.clone(),
        hosts: settings.hosts.clone(),
        feed: engine.feed().to_string(),
        key: engine.public_key(),
        abuse: dir.abuse.clone(),
        listing_policy: dir.listing_policy.clone(),
        delisting_policy: dir.delisting_policy.clone(),
        issued_at: crate::now(),
    })
}

pub(crate) fn sign_card(
    engine: &Engine,
    card: &MembershipCard,
    feed: &FeedAddress,
    item_id: &str,
) -> Result<SignedItem> {
    let envelope = Envelope {
        corvid: corvid_protocol::ns::PROTOCOL_MAJOR,
        issuer: Issuer {
            domain: card.domain.clone(),
            key: engine.public_key().key_id(),
        },
        body: Body::Card(card.clone()),
    };
    Ok(SignedItem::sign(
        engine.signer().as_ref(),
        &envelope,
        feed,
        item_id,
    )?)
}

/// Publishes the card on the own feed and on the directory node.
///
/// # Errors
/// When there is no directory configured or a publish fails.
pub async fn announce(engine: &Engine, link: &Link) -> Result<MembershipCard> {
    let card =
        own_card(engine).context("no [directory] section in the config: nothing to announce")?;
    let settings = engine.settings();
    let dir = settings.directory.as_ref().context("no directory")?;
    let directory: FeedAddress = dir.node.parse()?;
    let feed = engine.feed().clone();
    // A feed served by the component serves its card itself (item `card`).
    if !engine
        .feed_served
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let own = sign_card(engine, &card, &feed, CARD_ITEM)?;
        pubsub::publish(link, &feed.service, &feed.node, CARD_ITEM, own.to_element())
            .await
            .context("publishing the card on the own feed")?;
    }
    // A directory on a service of this server (the feed's, or with a
    // component feed, the server's PubSub component) is hosted here.
    let own_service = directory.service == feed.service
        || directory
            .service
            .strip_suffix(settings.domain.as_str())
            .is_some_and(|p| p.ends_with('.'));
    if own_service {
        // This member hosts the directory: create it where every member may
        // publish its own (signed) card.
        let mut fields = pubsub::feed_node_config(256, "open");
        for f in &mut fields {
            if f.0 == "pubsub#publish_model" {
                f.1 = "open".into();
            }
        }
        pubsub::ensure_node(link, &directory.service, &directory.node, &fields)
            .await
            .context("creating the directory node")?;
    }
    let listed = sign_card(engine, &card, &directory, &card.domain)?;
    pubsub::publish(
        link,
        &directory.service,
        &directory.node,
        &card.domain,
        listed.to_element(),
    )
    .await
    .with_context(|| format!("publishing the card on the directory {directory}"))?;
    Ok(card)
}

/// A member as seen in the directory.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// The card (as claimed).
    pub card: Option<MembershipCard>,
    /// The directory item id.
    pub item: String,
    /// Whether the card's signature verifies with its own key.
    pub signature_ok: bool,
    /// Why not, if not.
    pub signature_error: Option<String>,
    /// Whether the member's own feed, on its own domain, serves a card
    /// signed by the same key.
    pub domain_verified: bool,
    /// Why not, if not.
    pub domain_error: Option<String>,
    /// Whether it is already a configured peer (and with which key).
    pub peer: bool,
    /// Whether the pinned key equals the card's key.
    pub peer_key_matches: bool,
    /// Fingerprint of the card's key.
    pub fingerprint: Option<String>,
    /// This is our own card.
    pub own: bool,
}

fn open_card(
    item: &SignedItem,
    feed: &FeedAddress,
    item_id: &str,
) -> Result<MembershipCard, String> {
    let claimed: Envelope = item.json().to_typed().map_err(|e| e.to_string())?;
    let Body::Card(card) = claimed.body else {
        return Err("not a membership card".into());
    };
    let ring = KeyRing::pinned(&card.domain, card.key);
    let env = item.open(feed, item_id, &ring).map_err(|e| e.to_string())?;
    match env.body {
        Body::Card(c) if c.domain == item_id || item_id == CARD_ITEM => Ok(c),
        Body::Card(c) => Err(format!("card for {} listed under {item_id}", c.domain)),
        _ => Err("not a membership card".into()),
    }
}

/// Lists and checks every card on the directory.
///
/// # Errors
/// When the directory cannot be read.
pub async fn members(engine: &Engine, link: &Link) -> Result<Vec<Member>> {
    let settings = engine.settings();
    let dir = settings
        .directory
        .as_ref()
        .context("no [directory] section in the config")?;
    let directory: FeedAddress = dir.node.parse()?;
    let ids = pubsub::item_ids(link, &directory.service, &directory.node).await?;
    let mut out = Vec::new();
    for chunk in ids.chunks(16) {
        let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for (item_id, payload) in
            pubsub::items(link, &directory.service, &directory.node, &ids, None).await?
        {
            let parsed = payload.as_ref().map(SignedItem::from_element);
            let (card, signature_error) = match parsed {
                Some(Ok(item)) => match open_card(&item, &directory, &item_id) {
                    Ok(c) => (Some(c), None),
                    Err(e) => (
                        item.json()
                            .to_typed::<Envelope>()
                            .ok()
                            .and_then(|e| match e.body {
                                Body::Card(c) => Some(c),
                                _ => None,
                            }),
                        Some(e),
                    ),
                },
                Some(Err(e)) => (None, Some(e.to_string())),
                None => (None, Some("empty item".into())),
            };
            let mut member = Member {
                item: item_id.clone(),
                signature_ok: signature_error.is_none() && card.is_some(),
                signature_error,
                domain_verified: false,
                domain_error: None,
                peer: false,
                peer_key_matches: false,
                fingerprint: card.as_ref().map(|c| c.key.fingerprint().to_string()),
                own: card.as_ref().is_some_and(|c| c.domain == settings.domain),
                card: card.clone(),
            };
            if let Some(card) = &card {
                if let Some(p) = settings.peers.get(&card.domain) {
                    member.peer = true;
                    member.peer_key_matches = p.key == card.key;
                }
                match verify_domain(link, card).await {
                    Ok(()) => member.domain_verified = member.signature_ok,
                    Err(e) => member.domain_error = Some(e),
                }
            }
            out.push(member);
        }
    }
    Ok(out)
}

async fn verify_domain(link: &Link, card: &MembershipCard) -> Result<(), String> {
    let feed: FeedAddress = card.feed.parse().map_err(|e| format!("{e}"))?;
    let on_domain =
        feed.service == card.domain || feed.service.ends_with(&format!(".{}", card.domain));
    if !on_domain {
        return Err(format!(
            "feed service {} is not on {}",
            feed.service, card.domain
        ));
    }
    let got = pubsub::items(link, &feed.service, &feed.node, &[CARD_ITEM], None)
        .await
        .map_err(|e| format!("fetching {feed} card: {e}"))?;
    let Some((_, Some(payload))) = got.into_iter().next() else {
        return Err(format!("{feed} has no card item"));
    };
    let item = SignedItem::from_element(&payload).map_err(|e| e.to_string())?;
    let own = open_card(&item, &feed, CARD_ITEM)?;
    if own.key != card.key {
        return Err("the member's own feed serves a different key".into());
    }
    Ok(())
}
