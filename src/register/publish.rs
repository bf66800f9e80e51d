//! Publishing: an image offered to every project of its region, as a public image of the
//! platform or on the marketplace, and its withdrawal.
//!
//! - **Public** ([`Publication::Public`]): only an operator (a project the limits'
//!   `operators` name, or a caller asking as one: [`Scope::operator`]) publishes one of its
//!   images. The image is then visible to every project of the region, `protected` (no project
//!   but an operator may change or delete it), outside its owner's private-image quota, and
//!   not shareable; any project may copy it into a private image of its own
//!   ([`Ims::copy`](Ims::copy)).
//! - **Marketplace** ([`Publication::Marketplace`]): the owner publishes one of its images
//!   under a publisher's name, with an optional note on its price. Every project lists and may
//!   use (copy, export) it; it cannot be shared.
//!
//! Withdrawing ([`Ims::unpublish`]) makes the image private again (only an operator withdraws
//! a public image); copies made meanwhile are images of their own and stay as they are.

use super::error::Result;
use super::record::{ImageRecord, Visibility, now};
use super::rules::{self, Publication};
use super::{Ims, Scope};

impl Ims {
    /// Publishes the active image `id` of `scope` as `how` says (see the module doc); returns
    /// the record as stored. Publishing again the same way updates the publication (a
    /// marketplace image's publisher and price note).
    pub fn publish(&self, scope: &Scope, id: &str, how: &Publication) -> Result<ImageRecord> {
        let mut r = self.show(scope, id)?;
        let operator = self.is_operator(scope);
        if *how == Publication::Public {
            rules::check_operator(operator, &scope.project, "publish a public image")?;
        }
        if r.protected {
            rules::check_unprotected(&r, operator)?;
        } else {
            rules::check_owner(&r, &scope.project)?;
        }
        let members = self.catalog.members(id)?.len() as u64;
        rules::check_publishable(&r, members, how)?;
        match how {
            Publication::Public => {
                r.visibility = Visibility::Public;
                r.protected = true;
            }
            Publication::Marketplace {
                publisher,
                price_note,
            } => {
                r.marketplace = true;
                r.publisher = Some(publisher.clone());
                r.price_note = price_note.clone();
            }
        }
        r.updated_at = now();
        self.catalog.update(&r)?;
        Ok(r)
    }

    /// Withdraws image `id` from the public images or the marketplace: it becomes a private
    /// image of its owner again (and counts against its quota). A public image is withdrawn
    /// by an operator only, a marketplace image by its owner. Copies other projects made stay.
    pub fn unpublish(&self, scope: &Scope, id: &str) -> Result<ImageRecord> {
        let mut r = self.show(scope, id)?;
        rules::check_published(&r)?;
        if r.visibility == Visibility::Public {
            rules::check_operator(
                self.is_operator(scope),
                &scope.project,
                "withdraw a public image",
            )?;
        } else {
            rules::check_owner(&r, &scope.project)?;
        }
        r.visibility = Visibility::Private;
        r.protected = false;
        r.marketplace = false;
        r.publisher = None;
        r.price_note = None;
        r.updated_at = now();
        self.catalog.update(&r)?;
        Ok(r)
    }
}
