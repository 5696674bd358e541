// @forge/api in Kiln today: the names exist so apps link, and every call
// that needs the platform throws NotSupportedError naming itself. Product and
// egress calls arrive with Kiln's gateways.
import { unsupported, NotSupportedError } from 'builtin:kiln:unsupported';

class ForgeError extends Error {
  constructor(message) { super(message); this.name = this.constructor.name; }
}
export class ExternalEndpointNotAllowedError extends ForgeError {}
export class ProductEndpointNotAllowedError extends ForgeError {}
export class RequestProductNotAllowedError extends ForgeError {}
export class InvalidWorkspaceRequestedError extends ForgeError {}
export class NeedsAuthenticationError extends ForgeError {}
export class ProxyRequestError extends ForgeError {
  constructor(status, code) { super(`proxy request failed: ${status} ${code}`); this.status = status; this.code = code; }
}
export { NotSupportedError };

const requester = (who) => ({
  requestJira: unsupported(`@forge/api ${who}.requestJira`),
  requestConfluence: unsupported(`@forge/api ${who}.requestConfluence`),
  requestBitbucket: unsupported(`@forge/api ${who}.requestBitbucket`),
  requestGraph: unsupported(`@forge/api ${who}.requestGraph`),
  requestAtlassian: unsupported(`@forge/api ${who}.requestAtlassian`),
  withProvider: unsupported(`@forge/api ${who}.withProvider`),
  withContext: unsupported(`@forge/api ${who}.withContext`),
});

export const asApp = () => requester('asApp()');
export const asUser = () => requester('asUser()');
export const fetch = unsupported('@forge/api fetch');
export const requestJira = unsupported('@forge/api requestJira');
export const requestConfluence = unsupported('@forge/api requestConfluence');
export const requestBitbucket = unsupported('@forge/api requestBitbucket');
export const route = unsupported('@forge/api route');
export const assumeTrustedRoute = unsupported('@forge/api assumeTrustedRoute');
export const routeFromAbsolute = unsupported('@forge/api routeFromAbsolute');
export const invokeRemote = unsupported('@forge/api invokeRemote');
export const invokeService = unsupported('@forge/api invokeService');
export const getAppContext = unsupported('@forge/api getAppContext');
export const bindInvocationContext = unsupported('@forge/api bindInvocationContext');
export const authorize = unsupported('@forge/api authorize');
export const webTrigger = {
  getUrl: unsupported('@forge/api webTrigger.getUrl'),
  queryUrls: unsupported('@forge/api webTrigger.queryUrls'),
  deleteUrl: unsupported('@forge/api webTrigger.deleteUrl'),
};
export const permissions = {
  hasScope: unsupported('@forge/api permissions.hasScope'),
  canFetchFrom: unsupported('@forge/api permissions.canFetchFrom'),
  canLoadResource: unsupported('@forge/api permissions.canLoadResource'),
  hasPermission: unsupported('@forge/api permissions.hasPermission'),
};
export const privacy = { reportPersonalData: unsupported('@forge/api privacy.reportPersonalData') };
export const i18n = { getTranslations: unsupported('@forge/api i18n.getTranslations') };
export const storage = {
  get: unsupported('@forge/api storage.get'),
  set: unsupported('@forge/api storage.set'),
  delete: unsupported('@forge/api storage.delete'),
  query: unsupported('@forge/api storage.query'),
  getSecret: unsupported('@forge/api storage.getSecret'),
  setSecret: unsupported('@forge/api storage.setSecret'),
  deleteSecret: unsupported('@forge/api storage.deleteSecret'),
};
export const startsWith = unsupported('@forge/api startsWith');

export default { asApp, asUser, fetch, requestJira, requestConfluence, requestBitbucket, invokeRemote, getAppContext, webTrigger, permissions, storage };
