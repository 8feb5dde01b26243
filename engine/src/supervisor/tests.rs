//! Supervisor unit tests.
use super::*;

fn job(msg_id: &str, date: &str) -> Job {
    let header = Header { msg_id: msg_id.into(), date: date.into(), ..Header::default() };
    Job {
        kind: Kind::Apply,
        channel: Channel::Shell,
        idents: vec![],
        header_raw: vec![],
        header,
        meta: RequestMetadata::default(),
        content_raw: vec![],
        buffers: vec![],
        stop_on_error: false,
    }
}

#[test]
fn a_batch_runs_in_send_order_and_earlier_jobs_stay_put() {
    // queue[0] was read in an earlier poll: it keeps its place though it is "later"
    let mut q = vec![
        job("earlier-poll", "2026-12-04T01:00:09.000000Z"),
        job("task", "2026-12-04T01:00:00.000200Z"),
        job("push", "2026-12-04T01:00:00.000100Z"),
        job("task-2", "2026-12-04T01:00:00.000200Z"),
    ];
    order_by_send_time(&mut q, 1);
    let ids: Vec<&str> = q.iter().map(|j| j.header.msg_id.as_str()).collect();
    assert_eq!(ids, ["earlier-poll", "push", "task", "task-2"]);
}
