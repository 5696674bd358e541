// @forge/kvs in Kiln today: the names exist so apps link; storage calls
// throw NotSupportedError until Kiln's encrypted store is wired in.
import { unsupported, NotSupportedError } from 'builtin:kiln:unsupported';

export { NotSupportedError };
export const kvs = {
  get: unsupported('@forge/kvs kvs.get'),
  set: unsupported('@forge/kvs kvs.set'),
  delete: unsupported('@forge/kvs kvs.delete'),
  query: unsupported('@forge/kvs kvs.query'),
  getSecret: unsupported('@forge/kvs kvs.getSecret'),
  setSecret: unsupported('@forge/kvs kvs.setSecret'),
  deleteSecret: unsupported('@forge/kvs kvs.deleteSecret'),
  batchSet: unsupported('@forge/kvs kvs.batchSet'),
  batchGet: unsupported('@forge/kvs kvs.batchGet'),
  batchDelete: unsupported('@forge/kvs kvs.batchDelete'),
  entity: unsupported('@forge/kvs kvs.entity'),
  transact: unsupported('@forge/kvs kvs.transact'),
};
export const WhereConditions = { beginsWith: (value) => ({ condition: 'BEGINS_WITH', values: [value] }) };
export const Sort = { ASC: 'ASC', DESC: 'DESC' };
export const FilterConditions = {};
export const MetadataField = { CREATED_AT: 'CREATED_AT', UPDATED_AT: 'UPDATED_AT', EXPIRE_TIME: 'EXPIRE_TIME' };
export default kvs;
