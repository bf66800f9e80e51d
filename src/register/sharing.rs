//! Sharing: the owner adds and removes member projects; a member accepts or rejects. An
//! accepted image appears in the member's list and the member may use it (export, copy).
//!
//! Rules (in [`rules`]): members are projects of the image's region; at most
//! [`Limits::max_members`](super::Limits) members (a full-ECS image:
//! `max_full_ecs_members`, 10); public images, encrypted images, images on the marketplace and
//! full-ECS images not made from a CBR backup cannot be shared. The owner may stop sharing
//! or delete the image at any time without the members' consent.

use super::error::Result;

use super::record::{Member, MemberStatus, Visibility, now};
use super::{Ims, Scope, rules};

impl Ims {
    /// Shares image `id` of `scope` with `project` of `project_region`; the member is pending
    /// until it accepts. Sharing again with a member is a no-op.
    pub fn share(
        &self,
        scope: &Scope,
        id: &str,
        project: &str,
        project_region: &str,
    ) -> Result<Member> {
        let mut r = self.show(scope, id)?;
        // What cannot be shared says so to anyone who sees it (a public image is everyone's).
        rules::check_shareable(&r)?;
        rules::check_owner(&r, &scope.project)?;
        rules::check_active(&r)?;
        let t = now();
        let member = Member {
            image_id: r.id.clone(),
            project: project.to_string(),
            status: MemberStatus::Pending,
            created_at: t.clone(),
            updated_at: t,
        };
        let limits = self.limits.clone();
        let record = r.clone();
        self.catalog.add_member(&member, &|count| {
            rules::check_new_member(&record, project, project_region, count, &limits)
        })?;
        if r.visibility == Visibility::Private {
            r.visibility = Visibility::Shared;
            r.updated_at = now();
            self.catalog.update(&r)?;
        }
        Ok(self
            .catalog
            .members(id)?
            .into_iter()
            .find(|m| m.project == project)
            .unwrap_or(member))
    }

    /// Stops sharing image `id` with `project`.
    pub fn unshare(&self, scope: &Scope, id: &str, project: &str) -> Result<()> {
        let mut r = self.show(scope, id)?;
        rules::check_owner(&r, &scope.project)?;
        if !self.catalog.remove_member(id, project)? {
            return Err(rules::not_member(id, project));
        }
        if r.visibility == Visibility::Shared && self.catalog.members(id)?.is_empty() {
            r.visibility = Visibility::Private;
            r.updated_at = now();
            self.catalog.update(&r)?;
        }
        Ok(())
    }

    /// The members of image `id`: all of them for the owner, its own membership for a member.
    pub fn members(&self, scope: &Scope, id: &str) -> Result<Vec<Member>> {
        let r = self.show(scope, id)?;
        let all = self.catalog.members(id)?;
        if r.owner == scope.project {
            return Ok(all);
        }
        Ok(all
            .into_iter()
            .filter(|m| m.project == scope.project)
            .collect())
    }

    /// The member `scope.project` accepts image `id`.
    pub fn accept(&self, scope: &Scope, id: &str) -> Result<()> {
        self.answer(scope, id, MemberStatus::Accepted)
    }

    /// The member `scope.project` rejects image `id` (it leaves its list).
    pub fn reject(&self, scope: &Scope, id: &str) -> Result<()> {
        self.answer(scope, id, MemberStatus::Rejected)
    }

    /// The member `scope.project` takes its answer back: image `id` is pending again (seen,
    /// not listed), as the OpenStack Image API lets a member do.
    pub fn reconsider(&self, scope: &Scope, id: &str) -> Result<()> {
        self.answer(scope, id, MemberStatus::Pending)
    }

    fn answer(&self, scope: &Scope, id: &str, status: MemberStatus) -> Result<()> {
        self.show(scope, id)?;
        if !self.catalog.set_member(id, &scope.project, status)? {
            return Err(rules::not_member(id, &scope.project));
        }
        Ok(())
    }
}
