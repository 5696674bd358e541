// The atob and btoa globals, defined on first use.

import { native } from 'kiln:natives';

export const btoa = (data) => native.btoa(String(data));
export const atob = (data) => native.atob(String(data));
