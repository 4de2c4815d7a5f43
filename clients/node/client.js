// Antiphon client for Node: loads proto/antiphon/v1 at run time with @grpc/proto-loader.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

function loadApi() {
  const definition = protoLoader.loadSync('antiphon/v1/conversation.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).antiphon.v1;
}

function conversationClient(address) {
  const api = loadApi();
  return new api.Conversation(address, grpc.credentials.createInsecure());
}

// One text turn; resolves with {text, events, turnEnd}.
function send(client, request) {
  return new Promise((resolve, reject) => {
    const events = [];
    const call = client.Send(request);
    call.on('data', (event) => events.push(event));
    call.on('error', reject);
    call.on('end', () => {
      const text = events.filter((e) => e.event === 'agent_text').map((e) => e.agent_text.delta).join('');
      const last = events[events.length - 1];
      resolve({ text, events, turnEnd: last && last.turn_end });
    });
  });
}

module.exports = { conversationClient, loadApi, send };
