#!/usr/bin/env node
// Usage: node chat.js [host:port] "message" ...  — one Converse stream, one turn per message.
'use strict';

const { conversationClient } = require('./client');

const args = process.argv.slice(2);
const address = args.length > 1 && args[0].includes(':') ? args.shift() : '127.0.0.1:50051';
const messages = args.length ? args : ['Hello!'];

const client = conversationClient(address);
const call = client.Converse();
let pending = messages.slice();

call.on('data', (event) => {
  if (event.event === 'session_started') {
    console.error(`session ${event.session_started.session_id}`);
    call.write({ text: { content: pending.shift() } });
  } else if (event.event === 'agent_text') {
    process.stdout.write(event.agent_text.delta);
  } else if (event.event === 'error') {
    console.error(`\n[error ${event.error.code}] ${event.error.message}`);
  } else if (event.event === 'turn_end') {
    const end = event.turn_end;
    process.stdout.write('\n');
    console.error(`[${end.reason} in=${end.usage.input_tokens} out=${end.usage.output_tokens} ` +
      `first_token=${Math.round(end.latency.first_token_ms)}ms]`);
    if (pending.length) call.write({ text: { content: pending.shift() } });
    else call.end();
  }
});
call.on('error', (err) => { console.error(`[${err.code}] ${err.details}`); process.exitCode = 1; });
call.on('end', () => client.close());
call.write({ session_config: {} });
