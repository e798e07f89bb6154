/**
 * A hashing worker thread spoken to by numbered requests: each message gets an id, the worker
 * answers with that id (and a digest when it has one), and an error or an exit of the worker
 * fails every request still waiting. ChunkHasher and StreamHasher each run their own code on one.
 * The code is a plain-JavaScript string so that it survives bundling into the agent's single file.
 */
import { Worker } from 'node:worker_threads';

interface Pending {
  resolve: (digest: string | undefined) => void;
  reject: (error: Error) => void;
}

export class HashWorker {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private failure: Error | undefined;
  /** The worker has booted (some 30 ms after it was made, longer on a busy machine). */
  online = false;
  /** Settles once the worker booted, or failed to. */
  readonly booted: Promise<void>;

  constructor(source: string) {
    this.worker = new Worker(source, { eval: true });
    this.worker.unref();
    this.booted = new Promise((resolve) => {
      this.worker.once('online', () => {
        this.online = true;
        resolve();
      });
      this.worker.once('exit', () => resolve());
    });
    this.worker.on('message', ({ id, digest }: { id: number; digest?: string }) => {
      const waiter = this.pending.get(id);
      this.pending.delete(id);
      waiter?.resolve(digest);
    });
    const fail = (error: Error) => {
      this.failure ??= error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', () => fail(new Error('the hashing worker exited')));
  }

  /** Posts `message` with a new id; settles with the worker's answer to it. */
  send(message: object): Promise<string | undefined> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, ...message });
    });
  }

  async terminate(): Promise<void> {
    this.failure ??= new Error('the hashing worker was stopped');
    await this.worker.terminate();
  }
}
