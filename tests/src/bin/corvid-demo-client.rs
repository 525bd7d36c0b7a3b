//! A small XMPP client for `scripts/demo.sh`: plays a spammer sending to a
//! user, and the user reviewing mod_corvid's spam folder.
//!
//! ```text
//! corvid-demo-client SERVER JID PASSWORD_FILE send TO BODY
//! corvid-demo-client SERVER JID PASSWORD_FILE folder
//! corvid-demo-client SERVER JID PASSWORD_FILE release
//! ```
//!
//! `send` waits three seconds for an error in reply and prints it (a bounce
//! by mod_corvid) or says that none came. `folder` lists the spam folder;
//! `release` releases everything in it and prints what then arrives.

use std::process::ExitCode;
use std::time::Duration;

use corvid_tests::client::Client;
use xmpp_parsers::minidom::Element;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, jid, password_file, command, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: corvid-demo-client SERVER JID PASSWORD_FILE (send TO BODY | folder | release)"
        );
        return ExitCode::from(2);
    };
    let password = match std::fs::read_to_string(password_file) {
        Ok(p) => p.trim().to_owned(),
        Err(e) => {
            eprintln!("cannot read {password_file}: {e}");
            return ExitCode::from(2);
        }
    };
    let host = jid.split_once('@').map_or(jid.as_str(), |(_, h)| h);
    let client = Client::login_with(server.clone(), jid, &password);
    match (command.as_str(), rest) {
        ("send", [to, body]) => {
            client.message(to, body);
            println!("{jid} -> {to}: {body:?}");
            match client.wait_stanza(Duration::from_secs(3), |s| {
                s.name() == "message" && s.attr("type") == Some("error")
            }) {
                Some(e) => println!("  bounced: {}", describe_error(&e)),
                None => {
                    println!("  no error came back (delivered, or held without telling the sender)")
                }
            }
        }
        ("folder", []) => {
            let folder = client.spam_folder(host);
            println!("{jid}'s spam folder: {}", folder.instructions);
            for (label, _) in &folder.messages {
                println!("  {label}");
            }
        }
        ("release", []) => {
            let folder = client.spam_folder(host);
            let ids: Vec<&str> = folder.messages.iter().map(|(_, id)| id.as_str()).collect();
            let done = client.spam_folder_submit(host, &folder, &ids, "release", &[]);
            let info = done
                .get_child("note", "http://jabber.org/protocol/commands")
                .map(Element::text)
                .unwrap_or_default();
            println!("{jid} releases {} message(s): {info}", ids.len());
            for _ in &ids {
                let Some(m) = client.wait_stanza(Duration::from_secs(5), |s| {
                    s.name() == "message" && s.get_child("delay", "urn:xmpp:delay").is_some()
                }) else {
                    println!("  (a released message did not arrive)");
                    return ExitCode::FAILURE;
                };
                let body = m
                    .get_child("body", "jabber:client")
                    .map(Element::text)
                    .unwrap_or_default();
                let stamp = m
                    .get_child("delay", "urn:xmpp:delay")
                    .and_then(|d| d.attr("stamp"))
                    .unwrap_or("?")
                    .to_owned();
                println!(
                    "  arrived in the inbox: from {}: {body:?} (delay stamp {stamp}, when it first came)",
                    m.attr("from").unwrap_or("?")
                );
            }
        }
        _ => {
            eprintln!("unknown command {command} {rest:?}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn describe_error(e: &Element) -> String {
    let Some(error) = e.get_child("error", "jabber:client") else {
        return "an error without details".into();
    };
    let ns = "urn:ietf:params:xml:ns:xmpp-stanzas";
    let condition = error
        .children()
        .find(|c| c.ns() == ns && c.name() != "text")
        .map_or("?", |c| c.name());
    let text = error.get_child("text", ns).map(Element::text);
    match text {
        Some(t) => format!("{condition}: {t}"),
        None => condition.to_owned(),
    }
}
