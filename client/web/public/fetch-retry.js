// Fetching the page's own files when the browser has just started.

/**
 * A fetch that is tried again (up to 3 times, 250 ms apart) when it fails at the network level:
 * a browser that has just started may fail its first requests with ERR_NETWORK_CHANGED while
 * it discovers its interfaces, and the page's earliest requests (preloaded with the HTML) fall
 * into that window. An HTTP error answer is returned as it is.
 */
export async function fetchRetrying(url, options = {}) {
  let last;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 250));
    try {
      return await fetch(url, options);
    } catch (err) {
      last = err;
      if (err?.name === 'AbortError' || err?.name === 'TimeoutError') break;
    }
  }
  throw last;
}
