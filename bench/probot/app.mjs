// A no-op Probot app on 127.0.0.1: verifies the signature, parses, runs an empty handler,
// persists nothing. Usage: PORT=N WEBHOOK_SECRET=s PRIVATE_KEY_PATH=key.pem node app.mjs
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { Probot, createNodeMiddleware } from "probot";

const probot = new Probot({
  appId: 1,
  privateKey: readFileSync(process.env.PRIVATE_KEY_PATH, "utf8"),
  secret: process.env.WEBHOOK_SECRET,
  logLevel: "warn",
});
const middleware = await createNodeMiddleware(
  (app) => {
    app.on("issues", async () => {});
  },
  { probot, webhooksPath: "/webhooks/github" },
);
const server = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.end("ok");
    return;
  }
  middleware(req, res, () => {
    res.statusCode = 404;
    res.end();
  });
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("listening"));
