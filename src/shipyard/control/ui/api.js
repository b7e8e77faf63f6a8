// The API client: JSON in and out, the CSRF header on every mutating request, 401 -> AuthError.

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const listeners = new Set();

/** Call fn(error) whenever a request answers 401 (the app shows the token form). */
export function onAuthError(fn) {
  listeners.add(fn);
}

async function request(method, path, body, {signal} = {}) {
  const headers = {Accept: "application/json"};
  if (method !== "GET") headers["X-Shipyard-Request"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {method, headers, signal, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "the control plane does not answer (is `shipyard up` running?)");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401) {
    const error = new AuthError((data && data.error) || "a token is required");
    for (const fn of listeners) fn(error);
    throw error;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `${method} ${path} answered ${response.status}`);
  }
  return data === null ? {} : data;
}

export const get = (path, options) => request("GET", path, undefined, options);
export const post = (path, body, options) => request("POST", path, body ?? {}, options);
export const del = (path, options) => request("DELETE", path, undefined, options);

/** A GET that answers null when the endpoint or object does not exist or is unavailable (404/405/501/503). */
export async function maybe(path, options) {
  try {
    return await get(path, options);
  } catch (error) {
    if (error instanceof ApiError && [404, 405, 501, 503].includes(error.status)) return null;
    throw error;
  }
}

export function path(kind, namespace, name, ...rest) {
  return ["/apis", kind, namespace, name, ...rest].filter((part) => part !== undefined)
    .map((part, index) => (index === 0 ? part : encodeURIComponent(part))).join("/");
}

/** Every item of a kind, in every namespace. */
export async function list(kind, options) {
  return (await get(`/apis/${kind}`, options)).items || [];
}
