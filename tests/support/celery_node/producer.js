// A service written in JavaScript that enqueues workflow executions with celery-node, by task name only,
// and waits for their results. Usage: node producer.js BROKER_URL RESULT_BACKEND_URL '[{payload}, ...]'
// Prints the message ids, one JSON array.
const celery = require("celery-node");

async function main() {
  const [broker, backend, payloads] = process.argv.slice(2);
  const client = celery.createClient(broker, backend, "workflow_execution");
  await client.isReady();
  const results = JSON.parse(payloads).map((payload) =>
    client.sendTask("workflow_execution.execute", [], { payload }),
  );
  for (const result of results) {
    const record = await result.get(60000);
    if (!record || record.execution_id !== result.taskId) {
      throw new Error(`unexpected result for ${result.taskId}: ${JSON.stringify(record)}`);
    }
  }
  console.log(JSON.stringify(results.map((result) => result.taskId)));
  await client.disconnect();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
