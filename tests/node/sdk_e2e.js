// End-to-end checks of the official npm SDK (aws-greengrass-core-sdk,
// pinned in package.json) against a running store + ingest. Run by
// tests/tests/node_sdk.rs with STREAM_MANAGER_SERVER_PORT set; prints one
// line per check and a closing 'N passed, N failed' line.
'use strict';

const sm = require('aws-greengrass-core-sdk/stream-manager');

const port = Number(process.env.STREAM_MANAGER_SERVER_PORT);

function assert(cond, msg) {
    if (!cond) throw new Error(`assertion failed: ${msg}`);
}

function connect() {
    return new Promise((resolve, reject) => {
        const c = new sm.StreamManagerClient({ port, onErrorCb: reject });
        c.onConnected(() => resolve(c));
    });
}

const checks = {
    async createAppendReadListDescribeDelete() {
        const c = await connect();
        const def = new sm.MessageStreamDefinition()
            .withName('node-basic')
            .withStrategyOnFull(sm.StrategyOnFull.OverwriteOldestData);
        await c.createMessageStream(def);
        const seqs = [];
        for (let i = 0; i < 5; i++) {
            seqs.push(await c.appendMessage('node-basic', Buffer.from(`m${i}`)));
        }
        assert(JSON.stringify(seqs) === '[0,1,2,3,4]', `sequence numbers ${seqs}`);
        const msgs = await c.readMessages('node-basic', new sm.ReadMessagesOptions()
            .withDesiredStartSequenceNumber(2).withMinMessageCount(1).withMaxMessageCount(10));
        assert(msgs.length === 3, `read ${msgs.length}`);
        assert(msgs[0].payload.toString() === 'm2', 'payload');
        assert(msgs[0].sequenceNumber === 2, 'sequence number');
        const streams = await c.listStreams();
        assert(streams.includes('node-basic'), `list ${streams}`);
        const info = await c.describeMessageStream('node-basic');
        assert(info.definition.name === 'node-basic', 'describe name');
        assert(info.storageStatus.newestSequenceNumber === 4, 'newest');
        await c.deleteMessageStream('node-basic');
        let missing = false;
        try {
            await c.describeMessageStream('node-basic');
        } catch (e) {
            missing = e instanceof sm.ResourceNotFoundException;
        }
        assert(missing, 'ResourceNotFoundException after delete');
        c.close();
    },

    async concurrentAppendsAndBigNumbers() {
        const c = await connect();
        // maxSize as large as the SDK allows: JS sends it as a float.
        const def = new sm.MessageStreamDefinition()
            .withName('node-big')
            .withMaxSize(Number.MAX_SAFE_INTEGER)
            .withStrategyOnFull(sm.StrategyOnFull.RejectNewData);
        await c.createMessageStream(def);
        const results = await Promise.all([...Array(20).keys()].map((i) => c.appendMessage('node-big', Buffer.from([i]))));
        assert(new Set(results).size === 20, 'distinct sequence numbers');
        let notEnough = false;
        try {
            await c.readMessages('node-big', new sm.ReadMessagesOptions().withDesiredStartSequenceNumber(100));
        } catch (e) {
            notEnough = e instanceof sm.NotEnoughMessagesException;
        }
        assert(notEnough, 'NotEnoughMessagesException');
        c.close();
    },
};

(async () => {
    let failed = 0;
    for (const [name, fn] of Object.entries(checks)) {
        try {
            await fn();
            console.log(`ok   ${name}`);
        } catch (e) {
            failed += 1;
            console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
        }
    }
    const total = Object.keys(checks).length;
    console.log(`${total - failed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
})();
