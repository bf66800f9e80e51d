//! One conformance suite for every catalog: the same cases, unchanged, against the embedded
//! SQLite catalog and against a real PostgreSQL server (tests/common/postgres.rs starts one).
//! The concurrency cases open several catalogs on one database (as several processes would)
//! and race threads through each at the limits: the private-image quota, 128 members, one
//! membership per project, one winner per status move. Then the CLI against PostgreSQL: a
//! registration in one process, seen by another, and concurrent registrations at the quota.

mod common;

use std::path::Path;
use std::sync::Barrier;

use common::catalog::{cli, list, ok_json, random_raw, refused};
use common::postgres::Database;
use common::s;
use ims::register::catalog::{self, PostgresCatalog};
use ims::register::rules::{check_new_member, check_quota_for};
use ims::register::{
    Catalog, ImageRecord, ImageType, Limits, Member, MemberStatus, RuleCode, ServiceError,
    SqliteCatalog, Status, Visibility,
};

const MIB: u64 = 1 << 20;

/// Opens another catalog on the database under test, as another process would.
type Opener = dyn Fn() -> Box<dyn Catalog> + Sync;

fn record(name: &str, owner: &str, region: &str) -> ImageRecord {
    ImageRecord::new(name, owner, region, ImageType::Data)
}

fn member(image: &str, project: &str, at: &str) -> Member {
    Member {
        image_id: image.to_string(),
        project: project.to_string(),
        status: MemberStatus::Pending,
        created_at: at.to_string(),
        updated_at: at.to_string(),
    }
}

fn quota_refusal() -> ServiceError {
    ServiceError::rule(RuleCode::QuotaExceeded, "no")
}

fn ids(v: &[(ImageRecord, Option<MemberStatus>)]) -> Vec<&str> {
    v.iter().map(|(r, _)| r.id.as_str()).collect()
}

/// Runs every case, each on a catalog of its own from `fresh`.
fn conformance(fresh: &dyn Fn() -> Box<dyn Catalog>) {
    records_are_kept_whole_and_replaced_by_id(&*fresh());
    records_inserted_together_pass_one_check_or_none_is_kept(&*fresh());
    the_quota_count_is_the_owners_live_private_records(&*fresh());
    a_duplicate_id_or_mixed_owners_are_refused(&*fresh());
    a_transition_moves_only_from_the_given_statuses(&*fresh());
    a_project_sees_its_own_public_marketplace_and_shared_images_in_order(&*fresh());
    unfinished_records_are_queued_or_saving_in_every_region(&*fresh());
    members_are_added_once_answered_and_removed(&*fresh());
}

fn records_are_kept_whole_and_replaced_by_id(c: &dyn Catalog) {
    assert!(c.get("nope").unwrap().is_none());
    let mut r = record("one", "owner", "r1");
    r.tags.insert("k".into(), "v".into());
    r.description = "ünïcode \u{1F600} and \"quotes\"".into();
    c.insert(&r, &|_| Ok(())).unwrap();
    assert_eq!(c.get(&r.id).unwrap().unwrap(), r);
    r.name = "renamed".into();
    r.status = Status::Active;
    r.visibility = Visibility::Shared;
    c.update(&r).unwrap();
    assert_eq!(c.get(&r.id).unwrap().unwrap(), r);
    // Replacing a record that does not exist changes nothing.
    let ghost = record("ghost", "owner", "r1");
    c.update(&ghost).unwrap();
    assert!(c.get(&ghost.id).unwrap().is_none());
    // Several at once.
    let mut a = record("a", "owner", "r1");
    let mut b = record("b", "owner", "r1");
    c.insert_all(&[a.clone(), b.clone()], &|_| Ok(())).unwrap();
    a.status = Status::Active;
    b.status = Status::Active;
    c.update_all(&[b.clone(), a.clone()]).unwrap();
    assert_eq!(c.get(&a.id).unwrap().unwrap().status, Status::Active);
    assert_eq!(c.get(&b.id).unwrap().unwrap().status, Status::Active);
}

fn records_inserted_together_pass_one_check_or_none_is_kept(c: &dyn Catalog) {
    let group: Vec<ImageRecord> = (0..3)
        .map(|i| record(&format!("g{i}"), "owner", "r1"))
        .collect();
    let refused = c.insert_all(&group, &|_| Err(quota_refusal()));
    assert_eq!(
        refused.unwrap_err().code(),
        Some(RuleCode::QuotaExceeded),
        "the check's refusal comes back as it is"
    );
    assert!(c.visible("r1", "owner").unwrap().is_empty());
    c.insert_all(&group, &|count| {
        assert_eq!(count, 0);
        Ok(())
    })
    .unwrap();
    assert_eq!(c.visible("r1", "owner").unwrap().len(), 3);
    c.insert(&record("next", "owner", "r1"), &|count| {
        assert_eq!(count, 3);
        Ok(())
    })
    .unwrap();
    // Nothing inserted: nothing to check.
    c.insert_all(&[], &|_| panic!("no check for no records"))
        .unwrap();
}

fn the_quota_count_is_the_owners_live_private_records(c: &dyn Catalog) {
    for (status, visibility) in [
        (Status::Queued, Visibility::Private),
        (Status::Saving, Visibility::Private),
        (Status::Active, Visibility::Shared),
        (Status::Killed, Visibility::Private),
        (Status::Deleted, Visibility::Private),
        (Status::Active, Visibility::Public),
    ] {
        let mut r = record("q", "owner", "r1");
        r.status = status;
        r.visibility = visibility;
        c.insert(&r, &|_| Ok(())).unwrap();
    }
    // Another owner, and the owner in another region, have their own counts.
    c.insert(&record("other", "other", "r1"), &|_| Ok(()))
        .unwrap();
    c.insert(&record("elsewhere", "owner", "r2"), &|_| Ok(()))
        .unwrap();
    let seen = std::sync::Mutex::new(None);
    c.insert(&record("counted", "owner", "r1"), &|count| {
        *seen.lock().unwrap() = Some(count);
        Ok(())
    })
    .unwrap();
    // Queued, saving, shared: 3; killed, deleted and public ones do not count.
    assert_eq!(*seen.lock().unwrap(), Some(3));
}

fn a_duplicate_id_or_mixed_owners_are_refused(c: &dyn Catalog) {
    let r = record("dup", "owner", "r1");
    c.insert(&r, &|_| Ok(())).unwrap();
    let mut again = r.clone();
    again.name = "second".into();
    let e = c.insert(&again, &|_| Ok(())).unwrap_err();
    assert!(e.code().is_none(), "a database error, not a rule: {e}");
    assert_eq!(c.get(&r.id).unwrap().unwrap().name, "dup");
    // A group of which one record is a duplicate leaves none of the others.
    let fresh = record("fresh", "owner", "r1");
    assert!(c.insert_all(&[fresh.clone(), again], &|_| Ok(())).is_err());
    assert!(c.get(&fresh.id).unwrap().is_none());
    let mixed = [record("a", "owner", "r1"), record("b", "other", "r1")];
    assert!(c.insert_all(&mixed, &|_| Ok(())).is_err());
    assert!(c.get(&mixed[0].id).unwrap().is_none());
}

fn a_transition_moves_only_from_the_given_statuses(c: &dyn Catalog) {
    let r = record("t", "owner", "r1");
    c.insert(&r, &|_| Ok(())).unwrap();
    assert!(
        !c.transition("nope", &[Status::Queued], Status::Saving, None)
            .unwrap()
    );
    assert!(
        !c.transition(&r.id, &[Status::Saving], Status::Active, None)
            .unwrap()
    );
    assert!(
        c.transition(&r.id, &[Status::Queued], Status::Saving, None)
            .unwrap()
    );
    let saving = c.get(&r.id).unwrap().unwrap();
    assert_eq!(saving.status, Status::Saving);
    assert_eq!(saving.status_reason, None);
    assert!(
        c.transition(
            &r.id,
            &[Status::Queued, Status::Saving],
            Status::Killed,
            Some("why")
        )
        .unwrap()
    );
    let killed = c.get(&r.id).unwrap().unwrap();
    assert_eq!(killed.status, Status::Killed);
    assert_eq!(killed.status_reason.as_deref(), Some("why"));
    // Everything else in the record is kept.
    assert_eq!(killed.name, r.name);
    assert_eq!(killed.created_at, r.created_at);
    // A move without a reason keeps the one there.
    assert!(
        c.transition(&r.id, &[Status::Killed], Status::Deleted, None)
            .unwrap()
    );
    assert_eq!(
        c.get(&r.id).unwrap().unwrap().status_reason.as_deref(),
        Some("why")
    );
}

fn a_project_sees_its_own_public_marketplace_and_shared_images_in_order(c: &dyn Catalog) {
    let at = |name: &str, owner: &str, created: &str, id: &str| {
        let mut r = record(name, owner, "r1");
        r.created_at = created.into();
        r.id = id.into();
        r.status = Status::Active;
        r
    };
    // Same time: by id, in byte order ("B" before "a", whatever the database's locale).
    let own_a = at("own-a", "me", "2026-01-02T00:00:00Z", "a-own");
    let own_b = at("own-b", "me", "2026-01-02T00:00:00Z", "B-own");
    let mut public = at("public", "op", "2026-01-01T00:00:00Z", "public");
    public.visibility = Visibility::Public;
    let mut market = at("market", "seller", "2026-01-03T00:00:00Z", "market");
    market.marketplace = true;
    let shared = at("shared", "friend", "2026-01-04T00:00:00Z", "shared");
    let hidden = at("hidden", "friend", "2026-01-05T00:00:00Z", "hidden");
    let mut deleted = at("deleted", "me", "2026-01-06T00:00:00Z", "deleted");
    deleted.status = Status::Deleted;
    let mut queued = at("queued", "me", "2026-01-07T00:00:00Z", "queued");
    queued.status = Status::Queued;
    let mut elsewhere = at("elsewhere", "me", "2026-01-08T00:00:00Z", "elsewhere");
    elsewhere.region = "r2".into();
    for r in [
        &own_a, &own_b, &public, &market, &shared, &hidden, &deleted, &queued, &elsewhere,
    ] {
        c.insert(r, &|_| Ok(())).unwrap();
    }
    c.add_member(&member("shared", "me", "2026-01-04T00:00:00Z"), &|_| Ok(()))
        .unwrap();
    c.add_member(&member("hidden", "other", "2026-01-05T00:00:00Z"), &|_| {
        Ok(())
    })
    .unwrap();
    assert!(
        c.set_member("shared", "me", MemberStatus::Accepted)
            .unwrap()
    );
    let seen = c.visible("r1", "me").unwrap();
    assert_eq!(
        ids(&seen),
        ["public", "B-own", "a-own", "market", "shared", "queued"]
    );
    let statuses: Vec<Option<MemberStatus>> = seen.iter().map(|(_, m)| *m).collect();
    assert_eq!(
        statuses,
        [None, None, None, None, Some(MemberStatus::Accepted), None]
    );
    assert_eq!(seen[1].0, own_b);
    assert_eq!(ids(&c.visible("r2", "me").unwrap()), ["elsewhere"]);
    assert_eq!(
        ids(&c.visible("r1", "stranger").unwrap()),
        ["public", "market"]
    );
}

fn unfinished_records_are_queued_or_saving_in_every_region(c: &dyn Catalog) {
    let mut want = Vec::new();
    for (i, status) in [
        Status::Queued,
        Status::Saving,
        Status::Active,
        Status::Killed,
        Status::Deleted,
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = record("u", "owner", &format!("r{i}"));
        r.status = status;
        c.insert(&r, &|_| Ok(())).unwrap();
        if matches!(status, Status::Queued | Status::Saving) {
            want.push(r.id);
        }
    }
    let mut got: Vec<String> = c.unfinished().unwrap().into_iter().map(|r| r.id).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

fn members_are_added_once_answered_and_removed(c: &dyn Catalog) {
    let counts = std::sync::Mutex::new(Vec::new());
    let check = |n: u64| {
        counts.lock().unwrap().push(n);
        Ok(())
    };
    c.add_member(&member("img", "p2", "2026-01-01T00:00:00Z"), &check)
        .unwrap();
    c.add_member(&member("img", "p1", "2026-01-01T00:00:00Z"), &check)
        .unwrap();
    c.add_member(&member("img", "p0", "2026-01-02T00:00:00Z"), &check)
        .unwrap();
    // Sharing again is a no-op: not checked, the first membership kept.
    let mut again = member("img", "p1", "2026-02-01T00:00:00Z");
    again.status = MemberStatus::Accepted;
    c.add_member(&again, &check).unwrap();
    assert_eq!(*counts.lock().unwrap(), [0, 1, 2]);
    c.add_member(&member("other", "p1", "2026-01-01T00:00:00Z"), &check)
        .unwrap();
    let refused = c.add_member(&member("img", "p3", "2026-01-01T00:00:00Z"), &|n| {
        assert_eq!(n, 3);
        Err(ServiceError::rule(RuleCode::TooManyMembers, "full"))
    });
    assert_eq!(refused.unwrap_err().code(), Some(RuleCode::TooManyMembers));
    let members = c.members("img").unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.project.as_str()).collect();
    // By creation time, then project.
    assert_eq!(names, ["p1", "p2", "p0"]);
    assert!(members.iter().all(|m| m.status == MemberStatus::Pending));
    assert_eq!(members[0].created_at, "2026-01-01T00:00:00Z");

    assert!(c.set_member("img", "p1", MemberStatus::Accepted).unwrap());
    assert!(c.set_member("img", "p2", MemberStatus::Rejected).unwrap());
    assert!(!c.set_member("img", "p9", MemberStatus::Accepted).unwrap());
    let m = c.members("img").unwrap();
    assert_eq!(m[0].status, MemberStatus::Accepted);
    assert_ne!(m[0].updated_at, "2026-01-01T00:00:00Z");
    assert_eq!(m[1].status, MemberStatus::Rejected);

    assert!(c.remove_member("img", "p2").unwrap());
    assert!(!c.remove_member("img", "p2").unwrap());
    assert_eq!(c.members("img").unwrap().len(), 2);
    c.remove_members("img").unwrap();
    assert!(c.members("img").unwrap().is_empty());
    // Another image's members stay.
    assert_eq!(c.members("other").unwrap().len(), 1);
}

/// Runs `threads` closures at once (released together), `per` on each of `catalogs` opened by
/// `open`; returns their results in order.
fn race<T: Send>(
    open: &Opener,
    catalogs: usize,
    per: usize,
    f: &(dyn Fn(&dyn Catalog, usize) -> T + Sync),
) -> Vec<T> {
    let handles: Vec<Box<dyn Catalog>> = (0..catalogs).map(|_| open()).collect();
    let start = Barrier::new(catalogs * per);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..catalogs * per)
            .map(|i| {
                let (c, start) = (&*handles[i % catalogs], &start);
                scope.spawn(move || {
                    start.wait();
                    f(c, i)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// The concurrency cases, each on a database of its own from `fresh` (which gives an opener
/// of catalogs on it).
fn concurrency(fresh: &dyn Fn() -> Box<Opener>) {
    registrations_at_the_quota_never_pass_it(&*fresh());
    two_hundred_shares_give_exactly_128_members(&*fresh());
    one_project_shared_with_at_once_is_one_member(&*fresh());
    of_concurrent_status_moves_exactly_one_wins(&*fresh());
    shared_visible_answers_follow_changes_of_every_connection(&*fresh());
}

/// `visible_shared` (which a catalog may answer from a cache) answers what `visible` does after
/// every change, made through this connection or another (another process).
fn shared_visible_answers_follow_changes_of_every_connection(open: &Opener) {
    let (here, there) = (open(), open());
    let check = |project: &str| {
        let shared = here.visible_shared("r1", project).unwrap();
        let fresh = here.visible("r1", project).unwrap();
        assert_eq!(*shared, fresh, "{project}");
        ids(&fresh)
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let mut a = record("a", "me", "r1");
    a.status = Status::Active;
    here.insert(&a, &|_| Ok(())).unwrap();
    assert_eq!(check("me"), [a.id.clone()]);
    assert_eq!(check("me"), [a.id.clone()], "asked again, unchanged");
    let mut b = record("b", "me", "r1");
    b.status = Status::Active;
    there.insert(&b, &|_| Ok(())).unwrap();
    assert_eq!(check("me").len(), 2);
    a.name = "renamed".into();
    there.update(&a).unwrap();
    let seen = here.visible_shared("r1", "me").unwrap();
    assert!(seen.iter().any(|(r, _)| r.name == "renamed"));
    assert!(check("friend").is_empty());
    there
        .add_member(
            &member(&b.id, "friend", "2026-01-01T00:00:00Z"),
            &|_| Ok(()),
        )
        .unwrap();
    assert_eq!(check("friend"), [b.id.clone()]);
    there
        .set_member(&b.id, "friend", MemberStatus::Accepted)
        .unwrap();
    let seen = here.visible_shared("r1", "friend").unwrap();
    assert_eq!(seen[0].1, Some(MemberStatus::Accepted));
    check("friend");
    there
        .transition(&a.id, &[Status::Active], Status::Deleted, None)
        .unwrap();
    assert_eq!(check("me"), [b.id.clone()]);
}

fn registrations_at_the_quota_never_pass_it(open: &Opener) {
    let limits = Limits {
        private_image_quota: 50,
        ..Limits::default()
    };
    // 6 catalogs (processes) of 10 threads: 60 registrations against a quota of 50.
    let results = race(open, 6, 10, &|c, i| {
        c.insert(&record(&format!("r{i}"), "owner", "r1"), &|count| {
            check_quota_for(count, 1, &limits)
        })
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.code() == Some(RuleCode::QuotaExceeded))
        })
        .count();
    assert_eq!((ok, refused), (50, 10), "{results:?}");
    assert_eq!(open().visible("r1", "owner").unwrap().len(), 50);
    // Groups too: 10 groups of 3 against 20 places left of another owner's quota of 20.
    let limits = Limits {
        private_image_quota: 20,
        ..Limits::default()
    };
    let results = race(open, 5, 2, &|c, i| {
        let group: Vec<ImageRecord> = (0..3)
            .map(|j| record(&format!("g{i}-{j}"), "group", "r1"))
            .collect();
        c.insert_all(&group, &|count| check_quota_for(count, 3, &limits))
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 6);
    assert_eq!(open().visible("r1", "group").unwrap().len(), 18);
}

fn two_hundred_shares_give_exactly_128_members(open: &Opener) {
    let mut image = record("shared", "owner", "r1");
    image.status = Status::Active;
    open().insert(&image, &|_| Ok(())).unwrap();
    let limits = Limits::default();
    let results = race(open, 4, 50, &|c, i| {
        let project = format!("p{i:03}");
        c.add_member(&member(&image.id, &project, "t"), &|count| {
            check_new_member(&image, &project, "r1", count, &limits)
        })
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.code() == Some(RuleCode::TooManyMembers))
        })
        .count();
    assert_eq!((ok, full), (128, 72), "{results:?}");
    assert_eq!(open().members(&image.id).unwrap().len(), 128);
}

fn one_project_shared_with_at_once_is_one_member(open: &Opener) {
    let results = race(open, 4, 10, &|c, i| {
        let mut m = member("img", "p", &format!("2026-01-01T00:00:{i:02}Z"));
        if i % 2 == 1 {
            m.status = MemberStatus::Accepted;
        }
        c.add_member(&m, &|count| {
            assert_eq!(count, 0, "checked only for the first");
            Ok(())
        })
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(open().members("img").unwrap().len(), 1);
    // Answers at once: one membership, holding one of the answers.
    let answers = race(open, 4, 10, &|c, i| {
        let status = [MemberStatus::Accepted, MemberStatus::Rejected][i % 2];
        c.set_member("img", "p", status).unwrap()
    });
    assert!(answers.iter().all(|a| *a));
    let members = open().members("img").unwrap();
    assert_eq!(members.len(), 1);
    assert_ne!(members[0].status, MemberStatus::Pending);
}

fn of_concurrent_status_moves_exactly_one_wins(open: &Opener) {
    for round in 0..3 {
        let mut r = record(&format!("move{round}"), "owner", "r1");
        r.status = Status::Saving;
        open().insert(&r, &|_| Ok(())).unwrap();
        // Half would finish it, half would kill it (recovery against the registration).
        let results = race(open, 4, 8, &|c, i| {
            let to = [Status::Active, Status::Killed][i % 2];
            let moved = c
                .transition(&r.id, &[Status::Queued, Status::Saving], to, Some("race"))
                .unwrap();
            moved.then_some(to)
        });
        let winners: Vec<Status> = results.into_iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(open().get(&r.id).unwrap().unwrap().status, winners[0]);
    }
}

#[test]
fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let fresh = || -> Box<dyn Catalog> {
        let path = dir.path().join(format!(
            "c{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Box::new(SqliteCatalog::open(&path).unwrap())
    };
    conformance(&fresh);
}

#[test]
fn sqlite_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let fresh = || -> Box<Opener> {
        let path = dir.path().join(format!(
            "c{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Box::new(move || -> Box<dyn Catalog> { Box::new(SqliteCatalog::open(&path).unwrap()) })
    };
    concurrency(&fresh);
}

#[test]
fn postgres_conformance() {
    let t = "postgres_conformance";
    let Some(first) = Database::new(t) else {
        return;
    };
    let dbs = std::sync::Mutex::new(vec![]);
    let fresh = || -> Box<dyn Catalog> {
        let db = Database::new(t).unwrap();
        let c = PostgresCatalog::open(&db.url()).unwrap();
        dbs.lock().unwrap().push(db);
        Box::new(c)
    };
    conformance(&fresh);
    drop(first);
}

#[test]
fn postgres_concurrency() {
    let t = "postgres_concurrency";
    let Some(first) = Database::new(t) else {
        return;
    };
    let dbs = std::sync::Mutex::new(vec![]);
    let fresh = || -> Box<Opener> {
        let db = Database::new(t).unwrap();
        let url = db.url();
        dbs.lock().unwrap().push(db);
        Box::new(move || -> Box<dyn Catalog> { Box::new(PostgresCatalog::open(&url).unwrap()) })
    };
    concurrency(&fresh);
    drop(first);
}

/// The migrations: a new database gets the schema and its version once, however many
/// processes start together; opening again changes nothing; a newer schema is refused.
#[test]
fn postgres_schema_is_migrated_once_by_concurrent_starts() {
    let Some(db) = Database::new("postgres_schema_is_migrated_once_by_concurrent_starts") else {
        return;
    };
    let url = db.url();
    let start = Barrier::new(8);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                start.wait();
                PostgresCatalog::open(&url).unwrap();
            });
        }
    });
    assert_eq!(
        db.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version")
            .trim(),
        "1,2"
    );
    let c = PostgresCatalog::open(&url).unwrap();
    c.insert(&record("kept", "owner", "r1"), &|_| Ok(()))
        .unwrap();
    drop(c);
    let c = PostgresCatalog::open(&url).unwrap();
    assert_eq!(c.visible("r1", "owner").unwrap().len(), 1);
    assert_eq!(db.psql("SELECT COUNT(*) FROM schema_version").trim(), "2");
    // Sorted text columns compare bytes, whatever the database's locale.
    assert_eq!(
        db.psql(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_name IN ('images', 'members', 'jobs')
             AND data_type = 'text' AND collation_name IS DISTINCT FROM 'C' AND column_name <> 'record'"
        )
        .trim(),
        "0"
    );
    // Another schema of the same database is another catalog (`search_path`, as the docs say).
    db.psql("CREATE SCHEMA other");
    let other = PostgresCatalog::open(&format!("{url}&options=-csearch_path%3Dother")).unwrap();
    assert!(other.visible("r1", "owner").unwrap().is_empty());
    other
        .insert(&record("there", "owner", "r1"), &|_| Ok(()))
        .unwrap();
    assert_eq!(db.psql("SELECT COUNT(*) FROM other.images").trim(), "1");
    assert_eq!(db.psql("SELECT COUNT(*) FROM public.images").trim(), "1");
    drop(other);
    db.psql("INSERT INTO schema_version (version) VALUES (3)");
    let e = PostgresCatalog::open(&url).err().expect("a newer schema");
    assert!(e.to_string().contains("newer ims"), "{e}");
}

#[test]
fn postgres_catalog_errors_are_clear() {
    // Nothing listens there: an I/O error naming the catalog, after the connect timeout.
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgresql:///x?host={}&user=ims&connect_timeout=5",
        s(dir.path())
    );
    let e = PostgresCatalog::open(&url).err().expect("no server");
    assert!(e.to_string().contains("catalog database"), "{e}");
    let e = PostgresCatalog::open("postgres://[bad")
        .err()
        .expect("bad url");
    assert!(e.to_string().contains("PostgreSQL address"), "{e}");
    let e = catalog::open("mysql://host/db")
        .err()
        .expect("unknown scheme");
    assert!(e.to_string().contains("mysql://"), "{e}");
    // A path is an SQLite file.
    let path = dir.path().join("c.db");
    catalog::open(s(&path)).unwrap();
    assert!(path.exists());
    catalog::open(&format!("sqlite:{}", s(&dir.path().join("d.db")))).unwrap();
    assert!(dir.path().join("d.db").exists());
}

fn register_in(home: &Path, catalog: &str, disk: &Path, name: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ims"));
    cmd.args(["register", s(disk), "--name", name, "--type", "data"])
        .args(["--output", "json", "--catalog", catalog])
        .env("IMS_HOME", home)
        .env("IMS_PROJECT", "owner")
        .env("IMS_REGION", "r1")
        .env_remove("IMS_CATALOG")
        .env_remove("IMS_TEST_CRASH_AT");
    cmd.output().unwrap()
}

/// `ims register --catalog postgres://...` in one process; another process with another home
/// sees it through `--catalog` or `IMS_CATALOG`, and the SQLite file of neither home is made.
#[test]
fn cli_registers_into_postgres_and_another_process_lists_it() {
    let Some(db) = Database::new("cli_registers_into_postgres_and_another_process_lists_it") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let disk = dir.path().join("disk.raw");
    random_raw(&disk, 4 * MIB, 1, 7);
    let out = ok_json(&register_in(&a, &db.url(), &disk, "pg-image"));
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(out["status"], "active");

    let listed = list(&b, "owner", &["--catalog", &db.url()]);
    let names: Vec<&str> = listed.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pg-image"]);
    let by_env = std::process::Command::new(env!("CARGO_BIN_EXE_ims"))
        .args(["images", "show", &id, "--output", "json"])
        .env("IMS_HOME", &b)
        .env("IMS_CATALOG", db.url())
        .env("IMS_PROJECT", "owner")
        .env("IMS_REGION", "r1")
        .output()
        .unwrap();
    assert_eq!(ok_json(&by_env)["id"], id.as_str());
    assert!(!a.join("catalog.db").exists() && !b.join("catalog.db").exists());
    // Without --catalog, b's own (empty) SQLite catalog.
    assert!(list(&b, "owner", &[]).is_empty());
    // The record is in PostgreSQL.
    assert_eq!(
        db.psql(&format!("SELECT status FROM images WHERE id = '{id}'"))
            .trim(),
        "active"
    );
    // An address ims does not know is refused clearly.
    let out = cli(&b, "owner", &["images", "list", "--catalog", "mysql://x/y"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mysql://"));
}

/// Processes registering at once into one project through PostgreSQL (sharing the home, whose
/// store tells each recovery which writes are live): never more than the quota.
#[test]
fn cli_concurrent_registrations_stop_at_the_quota() {
    let Some(db) = Database::new("cli_concurrent_registrations_stop_at_the_quota") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("limits.json"), r#"{"private_image_quota": 4}"#).unwrap();
    let disk = dir.path().join("disk.raw");
    random_raw(&disk, 2 * MIB, 1, 9);
    let url = db.url();
    let children: Vec<_> = (0..7)
        .map(|i| {
            let (home, disk, url) = (home.clone(), disk.clone(), url.clone());
            std::thread::spawn(move || register_in(&home, &url, &disk, &format!("q{i}")))
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = outs.iter().filter(|o| o.status.success()).count();
    for o in outs.iter().filter(|o| !o.status.success()) {
        refused(o, "quota_exceeded");
    }
    assert_eq!(ok, 4);
    let listed = list(&home, "owner", &["--catalog", &url]);
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|r| r["status"] == "active"));
}

/// How long a list's read of the catalog takes on PostgreSQL with 1,000 records: `visible`
/// (every record fetched and decoded) against `visible_shared` (the cache of ids and row
/// versions), unchanged and after one change. By hand, in release:
/// `cargo test --release --test catalog postgres_visible_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn postgres_visible_timing() {
    let t = "postgres_visible_timing";
    let Some(db) = Database::new(t) else {
        return;
    };
    let c = PostgresCatalog::open(&db.url()).unwrap();
    let mut records: Vec<ImageRecord> = (0..1000)
        .map(|i| {
            let mut r = record(&format!("img-{i:04}"), "me", "r1");
            r.status = Status::Active;
            r
        })
        .collect();
    c.insert_all(&records, &|_| Ok(())).unwrap();
    let time = |f: &dyn Fn()| {
        let start = std::time::Instant::now();
        for _ in 0..100 {
            f();
        }
        start.elapsed() / 100
    };
    let full = time(&|| assert_eq!(c.visible("r1", "me").unwrap().len(), 1000));
    let cached = time(&|| assert_eq!(c.visible_shared("r1", "me").unwrap().len(), 1000));
    records[7].name = "changed".into();
    let changed = time(&|| {
        c.update(&records[7]).unwrap();
        assert_eq!(c.visible_shared("r1", "me").unwrap().len(), 1000);
    });
    println!(
        "PostgreSQL, 1,000 visible records, per list: visible {full:?}, visible_shared \
         unchanged {cached:?}, after one change {changed:?} (the change's own write included)"
    );
}
