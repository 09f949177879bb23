//! Which provider and which address a notice goes through: the provider of a channel for a
//! site and carrier (carrier at the site, then the carrier, then the site, then the channel's
//! default), and the channel itself (the recipient's own, then the fallback order, skipping
//! channels the recipient has no address for or no provider serves).

use std::str::FromStr;

use locker_schemas::{CarrierId, SiteId};

use super::config::{channel_name, ChannelProviders, RouteConfig};
use crate::parcels::model::{Channel, Recipient};

/// The routing table, validated by [`super::Notifier::new`].
#[derive(Debug, Clone)]
pub struct Router {
    pub(super) defaults: ChannelProviders,
    pub(super) routes: Vec<RouteConfig>,
    pub(super) fallback: Vec<Channel>,
}

/// Where a notice goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub channel: Channel,
    pub provider: String,
    pub to: String,
}

impl Router {
    /// The provider of `channel` for `carrier` at `site`, most specific first.
    pub fn provider(&self, site: &SiteId, carrier: &CarrierId, channel: Channel) -> Option<&str> {
        let tiers: [&dyn Fn(&RouteConfig) -> bool; 3] = [
            &|r| r.site.as_ref() == Some(site) && r.carrier.as_ref() == Some(carrier),
            &|r| r.site.is_none() && r.carrier.as_ref() == Some(carrier),
            &|r| r.site.as_ref() == Some(site) && r.carrier.is_none(),
        ];
        for matches in tiers {
            let hit = self
                .routes
                .iter()
                .filter(|r| matches(r))
                .find_map(|r| r.get(channel));
            if hit.is_some() {
                return hit;
            }
        }
        self.defaults.get(channel)
    }

    /// The channel, provider and address of a recipient's notice; `Err` names why none fits.
    pub fn route(
        &self,
        site: &SiteId,
        carrier: &CarrierId,
        r: &Recipient,
    ) -> Result<Route, String> {
        let mut tried: Vec<Channel> = Vec::new();
        let mut why = Vec::new();
        for c in std::iter::once(r.channel).chain(self.fallback.iter().copied()) {
            if tried.contains(&c) {
                continue;
            }
            tried.push(c);
            let to = match address(r, c) {
                Ok(to) => to,
                Err(e) => {
                    why.push(format!("{}: {e}", channel_name(c)));
                    continue;
                }
            };
            match self.provider(site, carrier, c) {
                Some(p) => {
                    return Ok(Route {
                        channel: c,
                        provider: p.to_owned(),
                        to,
                    })
                }
                None => why.push(format!(
                    "{}: no provider for site {site}, carrier {carrier}",
                    channel_name(c)
                )),
            }
        }
        Err(format!(
            "no channel can reach the recipient ({})",
            why.join("; ")
        ))
    }
}

/// The recipient's address on a channel (trimmed; an e-mail address must parse).
pub fn address(r: &Recipient, c: Channel) -> Result<String, &'static str> {
    let (v, missing) = match c {
        Channel::Sms | Channel::Whatsapp => (&r.phone, "no phone number"),
        Channel::Email => (&r.email, "no e-mail address"),
        Channel::Push => (&r.push, "no push token"),
    };
    let v = v.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let v = v.ok_or(missing)?;
    if c == Channel::Email && lettre::Address::from_str(v).is_err() {
        return Err("the e-mail address is not valid");
    }
    Ok(v.to_owned())
}
