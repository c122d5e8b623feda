//! One priority order and one pool of upload slots for all exporters
//! (issue 14): with `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE=1`, a
//! priority-1 SiteWise export drains its backlog before a priority-10 S3
//! export gets more than the one upload it may have started first, though
//! they are two exporter processes.

use std::time::{Duration, Instant};

use bus_schema::{
    ExportCommon, IotSiteWiseConfig, S3TaskExecutorConfig, StrategyOnFull, StreamDefinition,
};
use stream_manager_tests::aws::{aws_env, s3_client, Moto};
use stream_manager_tests::fake_iot::{FakeIot, Fault, Service};
use stream_manager_tests::{kill9, StoreHarness};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn the_pool_is_shared_by_all_exporters_and_handed_out_by_priority() {
    let fake = FakeIot::start();
    let moto = Moto::start();
    let store = StoreHarness::start(&[("STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE", "1")]);
    let mut sitewise = store.exporter("export-sitewise", &aws_env(&fake.url()));
    let mut s3 = store.exporter("export-s3", &aws_env(&moto.url()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(s3_client(&moto.url()).create_bucket().bucket("pool").send())
        .unwrap();

    // SiteWise: 100 entries (10 calls), each call served 300 ms late.
    let (asset, props) = fake.create_asset("pump", &[("rpm", "DOUBLE")]);
    fake.inject(
        Service::SiteWise,
        (0..10).map(|_| Fault::Delay(Duration::from_millis(300))),
    );
    let mut sw = StreamDefinition::new("alarms", StrategyOnFull::RejectNewData);
    sw.exports.iot_sitewise = vec![IotSiteWiseConfig {
        common: ExportCommon {
            identifier: "sw".into(),
            priority: Some(1),
            disabled: Some(true),
            ..Default::default()
        },
    }];
    store.create(sw.clone());
    let t0 = (bus::unix_ms() / 1000) as i64 - 100;
    for i in 0..100 {
        store.append(
            "alarms",
            format!(
                r#"{{"entryId":"e","assetId":"{asset}","propertyId":"{}","propertyValues":[{{"value":{{"doubleValue":{i}}},"timestamp":{{"timeInSeconds":{},"offsetInNanos":0}},"quality":"GOOD"}}]}}"#,
                props[0],
                t0 + i
            )
            .into_bytes(),
        );
    }
    // S3: 20 small tasks, each a fast upload.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("f.bin");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    let mut tasks = StreamDefinition::new("bulk", StrategyOnFull::RejectNewData);
    tasks.exports.s3_task_executor = vec![S3TaskExecutorConfig {
        common: ExportCommon {
            identifier: "s3".into(),
            priority: Some(10),
            disabled: Some(true),
            ..Default::default()
        },
        size_threshold_for_multipart_upload_bytes: None,
        status_config: None,
    }];
    store.create(tasks.clone());
    for i in 0..20 {
        store.append(
            "bulk",
            serde_json::to_vec(&serde_json::json!({
                "inputUrl": format!("file://{}", file.display()),
                "bucket": "pool",
                "key": format!("k{i}"),
            }))
            .unwrap(),
        );
    }
    // Both backlogs wait; both exports start together.
    tasks.exports.s3_task_executor[0].common.disabled = Some(false);
    sw.exports.iot_sitewise[0].common.disabled = Some(false);
    store.update(sw);
    store.update(tasks);
    let start = Instant::now();
    let s3_done_when_sitewise_drained = loop {
        let s3_done = store
            .export_status("bulk", "s3")
            .last_exported_sequence_number
            + 1;
        if store
            .export_status("alarms", "sw")
            .last_exported_sequence_number
            == 99
        {
            break s3_done;
        }
        assert!(start.elapsed() < WAIT, "SiteWise did not drain");
        std::thread::sleep(Duration::from_millis(20));
    };
    let sitewise_took = start.elapsed();
    store.wait_exported("bulk", "s3", 19, WAIT);
    kill9(&mut sitewise);
    kill9(&mut s3);
    // Alone, the S3 exporter would have run all 20 tasks in the 3 s the
    // SiteWise backlog took; with one slot for both, at most the upload it
    // may have started before SiteWise asked (and the one finishing then).
    assert!(
        s3_done_when_sitewise_drained <= 2,
        "{s3_done_when_sitewise_drained} S3 tasks ran while the priority-1 backlog waited ({sitewise_took:?})"
    );
    assert!(sitewise_took >= Duration::from_secs(3), "{sitewise_took:?}");
}
