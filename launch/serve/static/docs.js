// The API docs, rendered here from /openapi.json (no CDN: Swagger UI and ReDoc
// are not bundled with FastAPI; this page works offline).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function refName(ref) { return ref.split("/").pop(); }

// One line for a JSON schema: type, bounds, enum, default.
function describe(schema) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema.$ref);
  const options = schema.anyOf || schema.oneOf;
  if (options) return options.map(describe).filter(s => s !== "null").join(" | ") +
                      (options.some(o => o.type === "null") ? " | null" : "");
  let s = schema.type || "";
  if (schema.type === "array") s = `array of ${describe(schema.items)}`;
  if (schema.format) s += ` (${schema.format})`;
  if (schema.enum) s += ` one of ${schema.enum.map(v => JSON.stringify(v)).join(", ")}`;
  const bounds = [];
  if ("minimum" in schema) bounds.push(`≥ ${schema.minimum}`);
  if ("exclusiveMinimum" in schema) bounds.push(`> ${schema.exclusiveMinimum}`);
  if ("maximum" in schema) bounds.push(`≤ ${schema.maximum}`);
  if ("exclusiveMaximum" in schema) bounds.push(`< ${schema.exclusiveMaximum}`);
  if (bounds.length) s += ` ${bounds.join(", ")}`;
  return s;
}

function schemaTable(schema, components) {
  if (schema && schema.$ref) schema = components[refName(schema.$ref)] || schema;
  if (!schema || !schema.properties) return el("p", {}, describe(schema));
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties).map(([name, prop]) => el("tr", {},
    el("td", {}, el("code", {}, name), required.has(name) ? " *" : ""),
    el("td", {}, describe(prop)),
    el("td", {}, "default" in prop ? JSON.stringify(prop.default) : ""),
    el("td", {}, prop.description || "")));
  return el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"),
                             el("th", {}, "default"), el("th", {}, "description")), ...rows);
}

function operation(path, method, op, components) {
  const section = el("section", {class: "operation", id: `${method}-${path}`},
    el("h2", {}, el("span", {class: "method"}, method.toUpperCase()), " ", el("code", {}, path)),
    op.summary ? el("p", {class: "summary"}, op.summary) : null,
    op.description ? el("p", {}, op.description) : null);
  const body = op.requestBody && op.requestBody.content &&
               op.requestBody.content["application/json"];
  if (body) section.append(el("h3", {}, "Request body (application/json)"),
                           schemaTable(body.schema, components));
  const rows = Object.entries(op.responses || {}).map(([code, r]) => el("tr", {},
    el("td", {}, code),
    el("td", {}, r.description || ""),
    el("td", {}, Object.keys(r.content || {}).join(", ")),
    el("td", {}, Object.keys(r.headers || {}).join(", "))));
  section.append(el("h3", {}, "Responses"),
                 el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "meaning"),
                                    el("th", {}, "content"), el("th", {}, "headers")), ...rows));
  return section;
}

async function render() {
  const main = document.getElementById("docs");
  const status = document.getElementById("docs-status");
  try {
    const response = await fetch("/openapi.json");
    const spec = await response.json();
    const components = (spec.components && spec.components.schemas) || {};
    document.title = `API docs: ${spec.info.title} ${spec.info.version}`;
    main.append(el("p", {}, spec.info.description || ""));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        main.append(operation(path, method, op, components));
      }
    }
    main.append(el("h2", {}, "Schemas"));
    for (const [name, schema] of Object.entries(components)) {
      main.append(el("section", {class: "schema", id: `schema-${name}`},
                     el("h3", {}, name), schema.description ? el("p", {}, schema.description) : null,
                     schemaTable(schema, components)));
    }
    status.remove();
    document.body.dataset.ready = "1";
  } catch (e) {
    status.textContent = `cannot read /openapi.json: ${e}`;
    status.classList.add("error");
  }
}

render();
