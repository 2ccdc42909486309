// Sends requests through the proxy with undici's ProxyAgent, which opens a CONNECT tunnel for
// http:// URLs too (issue 12.3). The CA of an intercepted tunnel comes from NODE_EXTRA_CA_CERTS.
// Usage: node proxy_fetch.js PROXY_URL METHOD BODY URL...   Prints one JSON line per URL.
"use strict";
const { ProxyAgent, request } = require("undici");

async function main() {
  const [proxy, method, body, ...urls] = process.argv.slice(2);
  const dispatcher = new ProxyAgent(proxy);
  for (const url of urls) {
    const response = await request(url, {
      method,
      dispatcher,
      headers: { "content-type": "application/json" },
      body: method === "GET" ? undefined : body,
    });
    const text = await response.body.text();
    console.log(JSON.stringify({ url, status: response.statusCode, body: text }));
  }
  await dispatcher.close();
}

main().catch((err) => {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
});
